"""How far F1 moves between trainings that differ only in their seed, per ensemble size.

Centralised runs on fixed rows (``--split-seed 0``): only the initial weights and the shuffling change
(``--seed``). Two such runs are the same configuration, so how often they agree to 0.01 in F1 bounds
what a single federated-vs-centralised pair can show. One JSON, ``OUT/seed-noise.json``.

    python -m bench.bench_seed_noise --data D5 [--seeds 6 --members 1 4 8]

``D5``: ``iotad synth --devices 5 --rows-per-device 20000 --seed 11`` (the acceptance data).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_parity import run_cli


def noise(f1: list[float], tolerance: float = 0.01) -> dict[str, float]:
    """Spread of F1 over seeds, and the share of seed pairs whose F1 agree to ``tolerance``."""
    gaps = [abs(a - b) for a, b in itertools.combinations(f1, 2)]
    return {
        "f1_mean": statistics.fmean(f1),
        "f1_sd": statistics.stdev(f1),
        "pair_gap_median": statistics.median(gaps),
        "pair_gap_max": max(gaps),
        "pairs_within_tolerance": sum(g <= tolerance for g in gaps) / len(gaps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args()
    results: dict[str, Any] = {"data": str(a.data), "data_kind": "synthetic", "split_seed": a.split_seed,
                               "seeds": a.seeds, "members": {}}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iotad-seed-noise-") as tmp:
        for seed in range(a.seeds):  # seeds outside, ensemble sizes inside: load drifts hit every size alike
            for m in a.members:
                run = Path(tmp) / f"M{m}-{seed}"
                started = time.monotonic()
                r = run_cli(["centralized", "--data", str(a.data.resolve()), "--seed", str(seed), "--split-seed",
                             str(a.split_seed), "--members", str(m), "--out", str(run)])
                runs = results["members"].setdefault(str(m), {"runs": []})["runs"]
                runs.append({"seed": seed, "f1": r["f1"], "roc_auc": r["roc_auc"],
                             "seconds": time.monotonic() - started})
                print(f"  seed {seed} members {m}: F1 {r['f1']:.3f} ROC-AUC {r['roc_auc']:.3f}", flush=True)
    for m, entry in results["members"].items():
        entry |= noise([r["f1"] for r in entry["runs"]])
        entry["roc_auc_sd"] = statistics.stdev(r["roc_auc"] for r in entry["runs"])
        print(f"members {m}: F1 {entry['f1_mean']:.3f} ± {entry['f1_sd']:.3f}; seed pairs within 0.01: "
              f"{entry['pairs_within_tolerance']:.0%} (median gap {entry['pair_gap_median']:.3f}, largest "
              f"{entry['pair_gap_max']:.3f})")
    results["seconds"] = time.monotonic() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "seed-noise.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
