"""ClientApp start-up cost: under the deployment engine every message runs in a fresh process.

Measures, in fresh interpreters, the cumulative time from process start to each milestone of a
train message: interpreter up, Flower imported, the iotad ClientApp module imported (torch), the
device's cached splits loaded, the first training batch done. Median of ``--repeat`` runs.

    python -m bench.bench_clientapp [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, sys, time
from iotad.telemetry.device import process_age_seconds
marks = {"interpreter": process_age_seconds()}
t0 = time.monotonic(); base = marks["interpreter"]
def mark(name): marks[name] = base + time.monotonic() - t0
import flwr.clientapp  # noqa
mark("flwr imported")
import iotad.fl.client_app  # noqa: torch, the ML core
mark("iotad.fl.client_app imported")
from pathlib import Path
from iotad.data.device import load_device_splits
splits = load_device_splits(Path(sys.argv[1]), seed=0, cache_dir=Path(sys.argv[2]))
mark("cached splits loaded")
from iotad.core import local_steps
from iotad.data.schema import N_FEATURES
from iotad.core.model import Autoencoder
from iotad.core.preprocessing import FeatureStats, Scaler
from iotad.core.train import TrainConfig, get_weights
scaler = Scaler.from_stats(FeatureStats.of(splits.train.features))
weights = get_weights(Autoencoder(N_FEATURES))
local_steps.train(splits, weights, scaler, TrainConfig(epochs=1, min_steps=1))
mark("one local epoch trained")
print(json.dumps(marks))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    from iotad.data.device import load_device_splits
    from iotad.data.synthetic import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        write_synthetic(data, devices=1, rows_per_device=args.rows, seed=0)
        load_device_splits(data / "device-0", seed=0, cache_dir=cache)  # warm the cache as a device would
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", PROBE, str(data / "device-0"), str(cache)],
                                 check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("| milestone (train message, fresh process) | seconds since process start (median) |")
    print("|---|---|")
    for k, v in medians.items():
        print(f"| {k} | {v:.2f} |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "clientapp.json").write_text(json.dumps({"repeat": args.repeat, "rows": args.rows,
                                                        "median_seconds": medians, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
