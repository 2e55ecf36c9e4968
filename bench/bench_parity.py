"""Federated vs centralised F1 over several seeds, on one or more device splits.

Per seed and data set: one federated run and one centralised run per ``--central-epochs`` value. The
seed fixes the device splits, the initial weights and the shuffling, and all runs of a seed use the same
splits, so they are compared in pairs. A single pair is not a reliable comparison: F1 at the 0.99
quantile moves by several hundredths between seeds of the same training (docs/results.md), so this
reports means, spreads and the paired difference with its standard error; one JSON per data set,
``OUT/parity-NAME.json``.

    python -m bench.bench_parity --data synth=D5 dirichlet=DN iid=DI [--seeds 8 --central-epochs 20 60 --members 4]

``D5``: ``iotad synth --devices 5 --rows-per-device 20000 --seed 11`` (the generator's split: every
device has its own sensor profiles and attack mix); ``DN``: ``iotad partition --csv D5/device-*/traffic.csv
--devices 5 --alpha 0.5 --seed 1`` (Dirichlet over traffic types); ``DI``: the same without ``--alpha``
(IID). 20 epochs is the centralised default; 60 passes over each row equal the federated default (5
rounds x 12 local epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_cli(args: list[str]) -> dict[str, Any]:
    """Run an ``iotad`` command; returns the run folder's metrics (``--out`` is the last argument)."""
    subprocess.run([sys.executable, "-m", "iotad.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return dict(json.loads((Path(args[-1]) / "metrics.json").read_text()))


def compare(
    data: Path, seeds: range, rounds: int, central_epochs: list[int], work: Path, members: int
) -> dict[str, Any]:
    """Per-seed federated and centralised F1 / ROC-AUC on one data set, and their summary."""
    pairs = []
    for seed in seeds:
        common = ["--data", str(data), "--seed", str(seed), "--members", str(members)]
        fed = run_cli(["simulate", *common, "--rounds", str(rounds), "--out", str(work / f"F{seed}")])
        row = {"seed": seed, "federated_f1": fed["f1"], "federated_roc_auc": fed["roc_auc"]}
        for epochs in central_epochs:
            c = run_cli(["centralized", *common, "--epochs", str(epochs), "--out", str(work / f"C{epochs}-{seed}")])
            row |= {f"central{epochs}_f1": c["f1"], f"central{epochs}_roc_auc": c["roc_auc"]}
        pairs.append(row)
        print(f"  seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_f1")),
              flush=True)
    return {"data": str(data), "pairs": pairs, **summary(pairs, central_epochs)}


def summary(pairs: list[dict[str, Any]], central_epochs: list[int]) -> dict[str, float]:
    """Means and standard deviations per side; paired differences (federated - central) with standard errors."""
    out: dict[str, float] = {}
    sides = ["federated", *(f"central{e}" for e in central_epochs)]
    for side in sides:
        for metric in ("f1", "roc_auc"):
            values = [p[f"{side}_{metric}"] for p in pairs]
            out[f"{side}_{metric}_mean"] = statistics.fmean(values)
            out[f"{side}_{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for side in sides[1:]:
        diffs = [p["federated_f1"] - p[f"{side}_f1"] for p in pairs]
        out[f"f1_diff_{side}_mean"] = statistics.fmean(diffs)
        out[f"f1_diff_{side}_se"] = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
        out[f"f1_diff_{side}_max_abs"] = max(abs(d) for d in diffs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, metavar="NAME=DIR", help="device folders to compare on")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--central-epochs", type=int, nargs="+", default=[20])
    p.add_argument("--members", type=int, default=4, help="autoencoders in the ensemble (both sides)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args()
    sets = dict(item.split("=", 1) for item in a.data)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="iotad-parity-") as tmp:
        for name, data in sets.items():
            print(name, flush=True)
            t0 = time.monotonic()
            seeds = range(a.first_seed, a.first_seed + a.seeds)
            r = compare(Path(data).resolve(), seeds, a.rounds, a.central_epochs, Path(tmp) / name, a.members)
            r |= {"name": name, "seeds": len(seeds), "first_seed": a.first_seed, "rounds": a.rounds,
                  "members": a.members, "data_kind": "synthetic",
                  "seconds": time.monotonic() - t0}
            (a.out / f"parity-{name}.json").write_text(json.dumps(r, indent=2) + "\n")
            print(f"{name}: F1 federated {r['federated_f1_mean']:.3f} ± {r['federated_f1_sd']:.3f}")
            for e in a.central_epochs:
                side = f"central{e}"
                print(f"  vs centralised {e} epochs {r[f'{side}_f1_mean']:.3f} ± {r[f'{side}_f1_sd']:.3f}: paired "
                      f"difference {r[f'f1_diff_{side}_mean']:+.3f} (s.e. {r[f'f1_diff_{side}_se']:.3f}, largest "
                      f"{r[f'f1_diff_{side}_max_abs']:.3f})", flush=True)


if __name__ == "__main__":
    main()
