"""The agent's pipeline end to end on one core: raw CSV lines -> packet features -> window statistics ->
per-device quantile scaling -> ensemble score, with the share of each stage.

The rows are a synthetic device's traffic (``iotad synth``), fed in blocks of ``--batch`` lines as the agent
reads them; the detector is the torch-free :class:`iotad.edge.inference.NumpyDetector` on a bundle with the
window features (weights untrained: the cost does not depend on them). One BLAS thread. Each stage is timed
on its own over the same blocks (best of ``--repeat`` passes, CPU time), so shares add up to the total.

    python -m bench.bench_agent_pipeline [--rows 60000] [--batch 4096] [--members 4 1]

Writes bench/results/agent-pipeline.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def _cpu(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def measure(rows: int, batch: int, members: int, repeat: int, work: Path) -> dict[str, Any]:
    from iotad.core.bundle import bundle_from_weights, save_bundle
    from iotad.core.normalisation import QuantileScaler
    from iotad.core.preprocessing import ResidualScale
    from iotad.core.shapes import DEFAULT_HIDDEN, expected_shapes
    from iotad.data.loader import encode_lines, load_traffic
    from iotad.data.synthetic import write_synthetic
    from iotad.edge.inference import NumpyDetector
    from iotad.features.sets import WINDOW, WindowStage, feature_names

    csv = write_synthetic(work / "data", 1, rows, seed=1)[0]
    names = feature_names(WINDOW)
    train = load_traffic(csv, extra=WindowStage())
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) * 0.1
               for _ in range(members) for s in expected_shapes(len(names), DEFAULT_HIDDEN)]
    scaler = QuantileScaler.fit(train.features[train.labels == 0])
    residual = ResidualScale(count=10, sumsq=np.ones(len(names) * members))
    model_dir = save_bundle(work / f"model-{members}", bundle_from_weights(
        weights, scaler, 1.0, hidden=DEFAULT_HIDDEN, dropout=0.0, feature_names=names, residual_scale=residual))
    det = NumpyDetector.load(model_dir)

    lines = csv.read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    body = [ln + b"\n" for ln in lines[1:] if ln]
    blocks = [b"".join(body[i:i + batch]) for i in range(0, len(body), batch)]
    n = len(body)

    def packet() -> None:
        for b in blocks:
            encode_lines(b, header, labelled=False)

    def windowed() -> list[np.ndarray]:
        stage = WindowStage()
        return [encode_lines(b, header, labelled=False, extra=stage).features for b in blocks]

    windowed()  # numba compiles (or loads its cache) once, outside the timing
    feats = windowed()
    t_packet = _cpu(packet, repeat)
    t_windowed = _cpu(windowed, repeat)
    t_scale = _cpu(lambda: [scaler.transform(f) for f in feats], repeat)
    t_score = _cpu(lambda: [det.predict_scores(det.decision_function(f)) for f in feats], repeat)
    total = t_windowed + t_score
    stages = {"parse + packet encoding": t_packet, "window statistics": t_windowed - t_packet,
              "quantile scaling": t_scale, "autoencoder ensemble + threshold": t_score - t_scale}
    return {"rows": n, "batch": batch, "members": members, "features": len(names),
            "rows_per_cpu_second": n / total, "cpu_seconds": total,
            "stages": {k: {"cpu_seconds": v, "share": v / total} for k, v in stages.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--members", type=int, nargs="+", default=[4, 1])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "agent-pipeline.json")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotad-agent-pipeline-") as tmp:
        results = [measure(a.rows, a.batch, m, a.repeat, Path(tmp)) for m in a.members]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| members | features | rows/s (one core) | " + " | ".join(results[0]["stages"]) + " |")
    print("|---|---|---|" + "---|" * len(results[0]["stages"]))
    for r in results:
        shares = " | ".join(f"{s['share']:.0%}" for s in r["stages"].values())
        print(f"| {r['members']} | {r['features']} | {r['rows_per_cpu_second']:,.0f} | {shares} |")


if __name__ == "__main__":
    main()
