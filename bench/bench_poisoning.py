"""One hostile device of five: what each strategy's final model detects on the honest devices' traffic.

For every strategy (FedAvg, FedMedian, FedTrimmedAvg, Krum) a clean run and one run per poisoning of
device-4 (:mod:`bench.hostile_devices`): NaN / Inf / wrong-shape updates (the server's screen must reject
them), a x100 scaled and a sign-flipped update (the robust strategies must bound them) and a device trained
on attack traffic. F1 and FPR are taken on devices 0-3 only, at the run's global threshold, with each
device's own bundle, so a run is judged on the same rows whatever device-4 did.
Synthetic data only.

    python -m bench.bench_poisoning --rows 3000 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.hostile_devices import POISONS, STRATEGY_CONFIG, attack_trained_device, hostile_app

HOSTILE = "device-4"
SCREENED = ("nan weights", "inf weights", "wrong shapes")
BOUNDED = ("x100 scaled update", "sign-flipped update", "attack-trained device")


def honest_metrics(run: Path, data: Path, split_seed: int, devices: list[str]) -> dict[str, float]:
    """F1, FPR and recall of ``run``'s per-device bundles on the evaluation splits of ``devices``."""
    from iotad.core.detector import Detector
    from iotad.data.device import load_device_splits
    from iotad.features.sets import feature_set_of, stage_for

    tp = fp = fn = tn = 0
    for name in devices:
        detector = Detector.load(run / "devices" / name / "model")
        stage = stage_for(feature_set_of(detector.feature_names or ()))
        ev = load_device_splits(data / name, split_seed, extra=stage).evaluation
        flags = detector.predict_scores(detector.decision_function(ev.features)).astype(bool)
        attack = ev.labels != 0
        tp, fp = tp + int((flags & attack).sum()), fp + int((flags & ~attack).sum())
        fn, tn = fn + int((~flags & attack).sum()), tn + int((~flags & ~attack).sum())
    return {"f1": 2 * tp / max(2 * tp + fp + fn, 1), "fpr": fp / max(fp + tn, 1), "recall": tp / max(tp + fn, 1)}


def one_run(data: Path, out: Path, strategy: str, poison: str | None, args: argparse.Namespace) -> dict[str, Any]:
    from iotad.fl.simulation import simulate

    app = hostile_app(poison, HOSTILE) if poison in POISONS else None
    t0 = time.monotonic()
    simulate(data, args.rounds, out, local_epochs=args.local_epochs, members=args.members, seed=args.seed,
             extra_config=dict(STRATEGY_CONFIG[strategy]), client_app=app)
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    rejected: dict[str, int] = {}
    for r in history:
        for reason, n in r["rejected_updates"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    honest = [f"device-{k}" for k in range(args.devices) if f"device-{k}" != HOSTILE]
    return {"strategy": strategy, "poison": poison or "clean", "rejected_updates": rejected,
            "seconds": time.monotonic() - t0, **honest_metrics(out, data, args.seed, honest)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--rows", type=int, default=3000, help="rows per device")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGY_CONFIG))
    p.add_argument("--out", type=Path, default=Path("bench/results/poisoning.json"))
    args = p.parse_args()

    from iotad.data.synthetic import write_synthetic

    work = Path(tempfile.mkdtemp(prefix="iotad-poison-"))
    clean, dirty = work / "D", work / "D-attack-trained"
    write_synthetic(clean, args.devices, args.rows, seed=7)
    shutil.copytree(clean, dirty)
    attack_trained_device(clean / HOSTILE / "traffic.csv", dirty / HOSTILE / "traffic.csv")

    rows: list[dict[str, Any]] = []
    plan = [(s, None) for s in args.strategies] + [("fedavg", k) for k in SCREENED] + [
        (s, k) for s in args.strategies for k in BOUNDED]
    for i, (strategy, poison) in enumerate(plan):
        data = dirty if poison == "attack-trained device" else clean
        row = one_run(data, work / f"run-{i}", strategy, poison, args)
        rows.append(row)
        print(f"{strategy:14s} {row['poison']:22s} F1 {row['f1']:.4f} FPR {row['fpr']:.4f} "
              f"rejected {row['rejected_updates']} ({row['seconds']:.0f} s)", flush=True)
    clean_f1 = {r["strategy"]: r["f1"] for r in rows if r["poison"] == "clean"}
    for r in rows:
        r["f1_minus_clean"] = r["f1"] - clean_f1[r["strategy"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k != "out"},
                                    "data": "synthetic", "rows": rows}, indent=2, default=str) + "\n")
    print("\n| strategy | device-4 | F1 (devices 0-3) | F1 - clean | FPR | updates rejected |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['poison']} | {r['f1']:.4f} | {r['f1_minus_clean']:+.4f} | {r['fpr']:.4f} | "
              f"{sum(r['rejected_updates'].values())} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
