"""The centralised baseline and the model-applying commands (``evaluate``, ``score``).

The baseline pools every device's rows, so it is the upper reference the federation
is compared with; with ``--data`` it uses the very same per-device splits (same
seed) as ``iotad simulate``.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iotad.core.detector import Detector
from iotad.core.evaluation import ClassHistograms, metrics_from_histograms
from iotad.core.model import DEFAULT_MEMBERS
from iotad.core.runs import data_kind, device_dirs, model_dir, write_run
from iotad.core.train import TrainConfig
from iotad.data.device import load_device_splits
from iotad.data.loader import Traffic, load_traffic
from iotad.data.schema import FEATURE_NAMES, N_FEATURES, NORMAL
from iotad.data.splits import split_normal


def class_histograms(detector: Detector, traffic: Traffic) -> ClassHistograms:
    """Per-class histograms of the detector's scores on labelled traffic."""
    if len(traffic) and (traffic.labels < 0).any():
        raise ValueError("evaluation needs labelled rows (Attack_label and Attack_type columns)")
    errors = detector.decision_function(traffic.features)
    types = np.where(traffic.labels == 1, traffic.attack_types, NORMAL)
    return ClassHistograms.of(errors, types)


def _rejected(*parts: Traffic) -> dict[str, int]:
    total: Counter[str] = Counter()
    for p in parts:
        total.update(p.rejected)
    return dict(total)


def run_centralized(
    out: Path,
    *,
    data: Path | None = None,
    train_csv: list[Path] | None = None,
    eval_csv: list[Path] | None = None,
    epochs: int = 20,
    quantile: float = 0.99,
    seed: int = 0,
    members: int = DEFAULT_MEMBERS,
    split_seed: int | None = None,
) -> dict[str, Any]:
    """Train on pooled normal traffic, calibrate, evaluate; write the run folder.

    ``seed`` fixes the initial weights and the shuffling, ``split_seed`` (default: ``seed``) the
    train / calibration / evaluation split of the rows.
    """
    out = Path(out)
    split_seed = seed if split_seed is None else split_seed
    t0 = time.monotonic()
    if data is not None:
        splits = [load_device_splits(d, split_seed, cache_dir=out / "cache") for d in device_dirs(data)]
        train = Traffic.concat([s.train for s in splits])
        calibration = Traffic.concat([s.calibration for s in splits])
        evaluation = Traffic.concat([s.evaluation for s in splits])
        rejected: dict[str, int] = {}
        source: dict[str, Any] = {"data": str(data)}
    else:
        assert train_csv and eval_csv
        pooled = load_traffic(train_csv)
        train, calibration = split_normal(pooled, split_seed)
        evaluation = load_traffic(eval_csv)
        rejected = _rejected(pooled, evaluation)
        source = {"train_csv": [str(p) for p in train_csv], "eval_csv": [str(p) for p in eval_csv]}
    if len(train) == 0 or len(calibration) == 0:
        raise ValueError("no normal rows to train on after cleaning (see the rejected-row counts)")

    cfg = TrainConfig(epochs=epochs, seed=seed)
    with torch.random.fork_rng():  # seeded initial weights: the same command gives the same model
        torch.manual_seed(seed)
        detector = Detector(N_FEATURES, members=members, feature_names=FEATURE_NAMES)
    detector.fit(train.features, calibration.features, cfg, quantile)
    detector.metadata = {"source": "centralized"}
    assert detector.threshold is not None and detector.train_result is not None
    histograms = class_histograms(detector, evaluation)
    metrics = metrics_from_histograms(histograms, detector.threshold)
    bundle = detector.save(out / "model")
    history = [{"epoch": i + 1, "train_loss": loss} for i, loss in enumerate(detector.train_result.epoch_losses)]
    return write_run(
        out,
        kind="centralized",
        data_kind=data_kind(data),
        metrics=metrics,
        history=history,
        histograms=histograms,
        bundle_dir=bundle,
        extra={
            **source,
            "epochs": epochs,
            "quantile": quantile,
            "seed": seed,
            "split_seed": split_seed,
            "members": members,
            "rows": {"train": len(train), "calibration": len(calibration), "evaluation": len(evaluation)},
            "rejected": rejected,
            "train_seconds": detector.train_result.seconds,
            "seconds": time.monotonic() - t0,
        },
    )


def evaluate_csvs(model: Path, csvs: list[Path], out: Path) -> dict[str, Any]:
    """Metrics of a trained bundle on labelled CSVs, written to ``out``."""
    import json

    detector = Detector.load(model_dir(model), feature_names=FEATURE_NAMES)
    traffic = load_traffic(csvs)
    assert detector.threshold is not None
    metrics = metrics_from_histograms(class_histograms(detector, traffic), detector.threshold)
    metrics["rejected"] = traffic.rejected
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return metrics


def score_csv(model: Path, csv_path: Path, out: Path) -> tuple[int, int]:
    """Score every usable row: ``row, score, anomaly`` (row = 0-based data row of the input)."""
    detector = Detector.load(model_dir(model), feature_names=FEATURE_NAMES)
    from iotad.data.loader import read_header
    from iotad.data.schema import LABEL_COLUMN

    labelled = LABEL_COLUMN in read_header(csv_path)
    traffic = load_traffic([csv_path], dedupe=False, labelled=labelled)
    scores = detector.decision_function(traffic.features)
    flags = detector.predict_scores(scores)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "score", "anomaly"])
        for row, score, flag in zip(traffic.row_index.tolist(), scores.tolist(), flags.tolist(), strict=True):
            w.writerow([row, repr(float(score)), int(flag)])
    return len(traffic), int(np.sum(flags))
