"""The run folder every training command writes and every reporting command reads.

::

    RUN/metrics.json          final metrics (DESIGN.md section 6 keys) + run_kind + data_kind
    RUN/history.json          per epoch (centralised) or per round (federated)
    RUN/eval_histograms.json  per-class score histograms of the final evaluation (ROC/PR curves)
    RUN/run.json              how the run was made (kind, data, settings, rejected rows, timing)
    RUN/model/                the model bundle (``iotad score/evaluate --model RUN``)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from iotad.core.evaluation import ClassHistograms

METRIC_KEYS = (
    "precision", "recall", "f1", "accuracy", "fpr", "roc_auc", "pr_auc", "threshold",
    "n_normal", "n_attack", "per_attack_recall",
)


def device_dirs(data: Path) -> list[Path]:
    """``DATA/device-<k>`` folders in k order."""
    data = Path(data)
    if not data.is_dir():
        raise NotADirectoryError(f"{data} is not a folder of device-<k> sub-folders")
    found = [p for p in data.iterdir() if p.is_dir() and re.fullmatch(r"device-\d+", p.name)]
    if not found:
        raise FileNotFoundError(f"{data} holds no device-<k> folders (make them with iotad synth or partition)")
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def data_kind(data: Path | None) -> str:
    """``synthetic``, ``edge-iiotset`` or ``unknown``, from the marker the data commands write."""
    if data is None:
        return "unknown"
    try:
        return str(json.loads((Path(data) / "dataset.json").read_text()).get("kind", "unknown"))
    except (FileNotFoundError, json.JSONDecodeError):
        return "unknown"


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_run(
    out: Path,
    *,
    kind: str,
    data_kind: str,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    histograms: ClassHistograms,
    bundle_dir: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write the run folder; returns the metrics as written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise RuntimeError(f"metrics lack {missing}")
    metrics = {**metrics, "run_kind": kind, "data_kind": data_kind}
    _dump(out / "metrics.json", metrics)
    _dump(out / "history.json", history)
    _dump(out / "eval_histograms.json", histograms.to_dict())
    _dump(out / "run.json", {"kind": kind, "data_kind": data_kind, **extra})
    model = out / "model"
    if Path(bundle_dir).resolve() != model.resolve():
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(bundle_dir, model)
    return metrics


def model_dir(path: Path) -> Path:
    """A run folder's bundle, or ``path`` itself when it is a bundle."""
    path = Path(path)
    if (path / "model" / "bundle.json").exists():
        return path / "model"
    if (path / "bundle.json").exists():
        return path
    raise FileNotFoundError(f"{path} is neither a run folder with model/ nor a model bundle")


def read_run(path: Path) -> dict[str, Any]:
    """Everything ``iotad compare`` needs from a run folder."""
    path = Path(path)
    if not (path / "metrics.json").exists():
        raise FileNotFoundError(f"{path} is not a run folder (no metrics.json)")
    return {
        "path": path,
        "metrics": json.loads((path / "metrics.json").read_text()),
        "history": json.loads((path / "history.json").read_text()),
        "run": json.loads((path / "run.json").read_text()),
        "histograms": ClassHistograms.from_dict(json.loads((path / "eval_histograms.json").read_text())),
    }
