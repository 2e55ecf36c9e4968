"""What the ensemble buys and costs: one autoencoder vs the default ensemble, same data, in one run.

For each training seed, a centralised :class:`iotad.core.detector.Detector` with ``members`` 1 and with the
default ensemble (alternating which goes first, so drifting background load favours neither) is fitted on
the same synthetic normal rows (3 devices x 20k rows, seed 7, split as in ``bench_train``), thresholded at
the 0.99 quantile of held-out normal scores and evaluated on the same labelled mix. Reported per size:
F1 and ROC-AUC (mean and spread over seeds: the ensemble is there to shrink the spread), training CPU
seconds and scoring CPU seconds per 100k rows (torch, 1 thread), and the cost ratios.

Run: ``python -m bench.bench_ensemble [--seeds 4]`` (writes ``bench/results/ensemble.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.bench_train import load_data
from iotad.core.detector import Detector
from iotad.core.evaluation import ClassHistograms, metrics_from_histograms
from iotad.core.model import DEFAULT_MEMBERS
from iotad.core.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "ensemble.json"


def fit_and_score(data: dict[str, Any], members: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    det = Detector(data["train"].shape[1], members=members)
    cpu = time.process_time()
    det.fit(data["train"], data["calibration"], TrainConfig(seed=seed))
    train_cpu = time.process_time() - cpu
    cpu = time.process_time()
    scores = det.decision_function(data["evaluation"])
    score_cpu = time.process_time() - cpu
    assert det.threshold is not None
    m = metrics_from_histograms(ClassHistograms.of(scores, data["evaluation_types"]), det.threshold)
    return {"f1": m["f1"], "roc_auc": m["roc_auc"], "train_cpu_s": train_cpu,
            "score_cpu_s_per_100k": score_cpu * 1e5 / len(scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="ensemble size compared with 1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data(3, 20_000, 7, wait_s=0)
    sizes = (1, a.members)
    runs: dict[int, list[dict[str, float]]] = {k: [] for k in sizes}
    for seed in range(a.seeds):
        for k in sizes if seed % 2 == 0 else sizes[::-1]:
            runs[k].append(fit_and_score(data, k, seed))
            print(f"members {k} seed {seed}: {runs[k][-1]}", flush=True)
    summary = {}
    for k, rows in runs.items():
        summary[k] = {f"{key}_{stat}": fn([r[key] for r in rows]) for key in rows[0]
                      for stat, fn in (("mean", statistics.fmean), ("sd", statistics.stdev))}
    one, ens = summary[1], summary[a.members]
    ratio = {key: ens[f"{key}_mean"] / one[f"{key}_mean"] for key in ("train_cpu_s", "score_cpu_s_per_100k")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"seeds": a.seeds, "runs": runs, "summary": summary, "cost_ratio": ratio},
                                indent=2) + "\n")
    print("| members | F1 | ROC-AUC | training CPU-s | scoring CPU-s per 100k rows |\n|---|---|---|---|---|")
    for k, s in summary.items():
        print(f"| {k} | {s['f1_mean']:.3f} ± {s['f1_sd']:.3f} | {s['roc_auc_mean']:.3f} ± {s['roc_auc_sd']:.3f} | "
              f"{s['train_cpu_s_mean']:.1f} | {s['score_cpu_s_per_100k_mean']:.2f} |")
    print(f"cost ratio {a.members} / 1: training {ratio['train_cpu_s']:.2f}x, scoring "
          f"{ratio['score_cpu_s_per_100k']:.2f}x")


if __name__ == "__main__":
    main()
