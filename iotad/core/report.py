"""``iotad compare``: centralised vs federated runs as markdown, PNG plots and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core.evaluation import roc_curve_from_histograms
from iotad.core.runs import read_run

SUMMARY_KEYS = (
    "precision", "recall", "f1", "accuracy", "fpr", "roc_auc", "pr_auc", "threshold", "n_normal", "n_attack",
)


def _label(run: dict[str, Any]) -> str:
    r = run["run"]
    name = f"{run['path'].name} ({r['kind']}"
    if r["kind"] == "federated":
        name += f", {r.get('strategy', '?')}, {r.get('devices', '?')} devices"
    return name + ")"


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _plots(runs: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        h = run["history"]
        if run["run"]["kind"] == "federated":
            rounds = [r["round"] for r in h]
            ax.plot(rounds, [r["train_loss"] for r in h], marker="o", label=_label(run) + " per round")
        else:
            epochs = [r["epoch"] for r in h]
            ax.plot(epochs, [r["train_loss"] for r in h], linestyle="--", label=_label(run) + " per epoch")
    ax.set(xlabel="round (federated) / epoch (centralised)", ylabel="training loss (MSE)", yscale="log")
    ax.set_title("Training loss")
    ax.legend(fontsize=7)
    files.append(_save(fig, out / "loss.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        m = run["metrics"]
        if run["run"]["kind"] == "federated":
            rounds = [r["round"] for r in run["history"]]
            axes[0].plot(rounds, [r["metrics"]["f1"] for r in run["history"]], marker="o", label=_label(run))
            axes[1].plot(rounds, [r["metrics"]["fpr"] for r in run["history"]], marker="o", label=_label(run))
        else:
            axes[0].axhline(m["f1"] or 0.0, linestyle="--", color="black", label=_label(run))
            axes[1].axhline(m["fpr"] or 0.0, linestyle="--", color="black", label=_label(run))
    axes[0].set(xlabel="round", ylabel="F1", title="F1 per round")
    axes[1].set(xlabel="round", ylabel="FPR", title="False-positive rate per round")
    axes[0].legend(fontsize=7)
    files.append(_save(fig, out / "f1_fpr.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for run in runs:
        fpr, tpr = roc_curve_from_histograms(run["histograms"])
        ax.plot(fpr, tpr, label=f"{_label(run)} AUC={_fmt(run['metrics']['roc_auc'])}")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xscale="symlog", title="ROC")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7, loc="lower right")
    files.append(_save(fig, out / "roc.png"))

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        c = run["metrics"]["confusion"]
        grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "anomaly"], yticklabels=["normal", "attack"],
               xlabel="predicted", ylabel="true", title=run["path"].name)
    files.append(_save(fig, out / "confusion.png"))

    types = sorted({t for run in runs for t in run["metrics"]["per_attack_recall"]})
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        rec = run["metrics"]["per_attack_recall"]
        ax.bar(np.arange(len(types)) + i * width, [rec.get(t) or 0.0 for t in types], width, label=_label(run))
    ax.set_xticks(np.arange(len(types)) + 0.4 - width / 2, types, rotation=45, ha="right")
    ax.set(ylabel="recall", ylim=(0, 1.05), title="Recall per attack type")
    ax.legend(fontsize=7)
    files.append(_save(fig, out / "per_attack_recall.png"))
    return files


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def compare(run_paths: list[Path], out: Path) -> Path:
    """Write ``OUT/report.md``, ``OUT/comparison.json`` and the plots; returns the markdown path."""
    runs = [read_run(Path(p)) for p in run_paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(runs, out)
    kinds = {r["run"]["data_kind"] for r in runs}
    lines = ["# iotad: centralised vs federated", ""]
    if "synthetic" in kinds:
        lines += ["> **Synthetic data.** These results come from iotad's synthetic traffic generator, "
                  "not from Edge-IIoTset; they show the pipeline works, not how it does on real captures.", ""]
    lines += ["| run | " + " | ".join(SUMMARY_KEYS) + " |", "|---" * (len(SUMMARY_KEYS) + 1) + "|"]
    for r in runs:
        lines.append(f"| {_label(r)} | " + " | ".join(_fmt(r["metrics"].get(k)) for k in SUMMARY_KEYS) + " |")
    base = next((r for r in runs if r["run"]["kind"] == "centralized"), None)
    if base is not None:
        lines += ["", "F1 difference to the centralised baseline:", ""]
        for r in runs:
            if r is not base and r["metrics"]["f1"] is not None and base["metrics"]["f1"] is not None:
                lines.append(f"- {_label(r)}: {r['metrics']['f1'] - base['metrics']['f1']:+.4f}")
        lines += ["", "One run per side: F1 at a fixed quantile moves by several hundredths between training seeds "
                  "of the same configuration, so a single difference is not a verdict; `python -m "
                  "bench.bench_parity` compares over seeds."]
    types = sorted({t for r in runs for t in r["metrics"]["per_attack_recall"]})
    lines += ["", "## Recall per attack type", "", "| attack | " + " | ".join(r["path"].name for r in runs) + " |",
              "|---" * (len(runs) + 1) + "|"]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(_fmt(r["metrics"]["per_attack_recall"].get(t)) for r in runs) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    summary = {
        "data_kinds": sorted(kinds),
        "runs": [{"path": str(r["path"]), "run": r["run"], "metrics": r["metrics"]} for r in runs],
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return report
