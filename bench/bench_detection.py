"""Detection quality over seeds: federated vs centralised, window vs per-packet features, and baselines.

Per seed and data set (all on the same per-device splits, so every comparison is paired):

* ``central``: ``iotad centralized`` (window features, per-device normalisation: the defaults);
* ``federated``: ``iotad simulate`` with the same settings;
* ``central_packet``: the centralised run on the per-packet features alone;
* ``iforest`` / ``pca``: scikit-learn's IsolationForest and a PCA reconstruction score on the same window
  features and per-device quantile scaling, thresholded like the autoencoder (0.99 quantile of the merged
  normal calibration scores).

Writes ``OUT/detection-NAME.json`` (per-seed rows and the paired summary) and prints a markdown table.
Synthetic data only: these figures are not results on Edge-IIoTset.

    python -m bench.bench_detection --data synth=D5 dirichlet=DN --seeds 16
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

import numpy as np

SIDES = ("central", "federated", "central_packet", "iforest", "pca")
METRICS = ("roc_auc", "pr_auc", "f1", "fpr")


def run_cli(args: list[str]) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "iotad.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return dict(json.loads((Path(args[-1]) / "metrics.json").read_text()))


def baselines(data: Path, seed: int, cache: Path) -> dict[str, dict[str, Any]]:
    """IsolationForest and PCA on per-device quantile-scaled window features."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score

    from iotad.core.normalisation import QuantileScaler
    from iotad.core.runs import device_dirs
    from iotad.data.device import load_device_splits
    from iotad.features.sets import WINDOW, stage_for

    parts = [load_device_splits(d, seed, cache_dir=cache, extra=stage_for(WINDOW)) for d in device_dirs(data)]
    scalers = [QuantileScaler.fit(p.train.features) for p in parts]
    train = np.concatenate([s.transform(p.train.features) for s, p in zip(scalers, parts, strict=True)])
    cal = [s.transform(p.calibration.features) for s, p in zip(scalers, parts, strict=True)]
    ev = [s.transform(p.evaluation.features) for s, p in zip(scalers, parts, strict=True)]
    labels = np.concatenate([p.evaluation.labels for p in parts]) != 0
    types = np.concatenate([p.evaluation.attack_types for p in parts])
    forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=1).fit(train)
    pca = PCA(n_components=0.95, random_state=seed).fit(train)

    def pca_score(x: np.ndarray) -> np.ndarray:
        return np.asarray(((x - pca.inverse_transform(pca.transform(x))) ** 2).mean(axis=1))

    out = {}
    for name, score in (("iforest", lambda x: -forest.score_samples(x)), ("pca", pca_score)):
        threshold = float(np.quantile(np.concatenate([score(c) for c in cal]), 0.99))
        s = np.concatenate([score(e) for e in ev])
        flag = s >= threshold
        tp, fp = int((flag & labels).sum()), int((flag & ~labels).sum())
        fn = int((~flag & labels).sum())
        out[name] = {
            "roc_auc": float(roc_auc_score(labels, s)), "pr_auc": float(average_precision_score(labels, s)),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "fpr": fp / max(int((~labels).sum()), 1),
            "per_attack_recall": {t: float(flag[types == t].mean()) for t in sorted(set(types)) if t != "Normal"},
        }
    return out


def compare(data: Path, seeds: range, work: Path, rounds: int) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        common = ["--data", str(data), "--seed", str(seed)]
        row: dict[str, Any] = {"seed": seed}
        row["central"] = run_cli(["centralized", *common, "--out", str(work / f"C{seed}")])
        row["federated"] = run_cli(["simulate", *common, "--rounds", str(rounds), "--out", str(work / f"F{seed}")])
        row["central_packet"] = run_cli(["centralized", *common, "--features", "packet",
                                         "--out", str(work / f"P{seed}")])
        row |= baselines(data, seed, work / f"C{seed}" / "cache")
        rows.append({k: ({m: v[m] for m in (*METRICS, "per_attack_recall")} if isinstance(v, dict) else v)
                     for k, v in row.items()})
        print(f"  seed {seed}: " + ", ".join(f"{s} F1 {row[s]['f1']:.3f} AUC {row[s]['roc_auc']:.4f}"
                                            for s in SIDES), flush=True)
    return {"data": str(data), "rows": rows, **summary(rows)}


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in SIDES:
        for m in METRICS:
            out[f"{side}_{m}"] = _mean_se([r[side][m] for r in rows])
        types = sorted(rows[0][side]["per_attack_recall"])
        out[f"{side}_per_attack_recall"] = {t: statistics.fmean(r[side]["per_attack_recall"][t] for r in rows)
                                            for t in types}
    for m in ("roc_auc", "f1"):
        out[f"gap_federated_central_{m}"] = _mean_se([r["federated"][m] - r["central"][m] for r in rows])
    return out


def table(name: str, r: dict[str, Any], seeds: int) -> str:
    lines = [f"**{name}** ({seeds} seeds, synthetic data; mean ± s.e.)", "",
             "| side | ROC-AUC | PR-AUC | F1 | FPR |", "|---|---|---|---|---|"]
    for side in SIDES:
        cells = [f"{r[f'{side}_{m}'][0]:.4f} ± {r[f'{side}_{m}'][1]:.4f}" for m in METRICS]
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    gap_auc, gap_f1 = r["gap_federated_central_roc_auc"], r["gap_federated_central_f1"]
    lines += ["", f"federated - central: ROC-AUC {gap_auc[0]:+.4f} ± {gap_auc[1]:.4f}, "
                  f"F1 {gap_f1[0]:+.4f} ± {gap_f1[1]:.4f}", "",
              "| attack | " + " | ".join(SIDES) + " |", "|---|" + "---|" * len(SIDES)]
    for t in r["central_per_attack_recall"]:
        lines.append(f"| {t} | " + " | ".join(f"{r[f'{s}_per_attack_recall'][t]:.3f}" for s in SIDES) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, metavar="NAME=DIR")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for item in a.data:
        name, data = item.split("=", 1)
        t0 = time.monotonic()
        seeds = range(a.first_seed, a.first_seed + a.seeds)
        with tempfile.TemporaryDirectory(prefix="iotad-detection-") as tmp:
            r = compare(Path(data).resolve(), seeds, Path(tmp), a.rounds)
        r |= {"name": name, "seeds": len(seeds), "first_seed": a.first_seed, "rounds": a.rounds,
              "data_kind": "synthetic", "seconds": time.monotonic() - t0}
        (a.out / f"detection-{name}.json").write_text(json.dumps(r, indent=2) + "\n")
        print(table(name, r, len(seeds)), flush=True)


if __name__ == "__main__":
    main()
