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
from typing import Any, NamedTuple

import numpy as np
import torch

from iotad.core.bundle import save_bundle
from iotad.core.detector import Detector
from iotad.core.evaluation import ClassHistograms, metrics_from_histograms
from iotad.core.model import DEFAULT_MEMBERS, Autoencoder
from iotad.core.normalisation import GLOBAL, LOCAL, SCALER_OF, check_normalisation
from iotad.core.runs import data_kind, device_dirs, model_dir, write_run
from iotad.core.shared_model import evaluation_histograms, fit_shared, make_parts, part_bundle, save_device_bundles
from iotad.core.train import TrainConfig
from iotad.data.device import load_device_splits
from iotad.data.loader import Traffic, load_traffic
from iotad.data.schema import NORMAL
from iotad.data.splits import Splits, split_normal
from iotad.data.traffic import ExtraFeatures
from iotad.features.sets import DEFAULT_FEATURE_SET, feature_names, feature_set_of, stage_for


def class_histograms(detector: Detector, traffic: Traffic) -> ClassHistograms:
    """Per-class histograms of the detector's scores on labelled traffic."""
    if len(traffic) and (traffic.labels < 0).any():
        raise ValueError("evaluation needs labelled rows (Attack_label and Attack_type columns)")
    errors = detector.decision_function(traffic.features)
    types = np.where(traffic.labels == 1, traffic.attack_types, NORMAL)
    return ClassHistograms.of(errors, types)


def _counts(*parts: Traffic) -> dict[str, dict[str, int]]:
    """Rejected rows per reason and kept rows' label notes, summed over the reads."""
    rejected: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for p in parts:
        rejected.update(p.rejected)
        notes.update(p.label_notes)
    return {"rejected": {k: v for k, v in rejected.items() if v}, "label_notes": {k: v for k, v in notes.items() if v}}


def _load_parts(
    data: Path | None, train_csv: list[Path] | None, eval_csv: list[Path] | None, split_seed: int,
    feature_set: str, cache: Path,
) -> tuple[list[str], list[Splits], dict[str, dict[str, int]], dict[str, Any]]:
    """Per-device splits (``--data``) or one pooled part (``--train-csv``/``--eval-csv``)."""
    if data is not None:
        dirs = device_dirs(data)
        splits = [load_device_splits(d, split_seed, cache_dir=cache, extra=stage_for(feature_set)) for d in dirs]
        # Each part of a device's splits carries the counts of the device's whole read: one per device.
        return [d.name for d in dirs], splits, _counts(*(s.train for s in splits)), {"data": str(data)}
    assert train_csv and eval_csv
    pooled = load_traffic(train_csv, extra=stage_for(feature_set))
    train, calibration = split_normal(pooled, split_seed)
    evaluation = load_traffic(eval_csv, extra=stage_for(feature_set))
    source = {"train_csv": [str(p) for p in train_csv], "eval_csv": [str(p) for p in eval_csv]}
    return ["pooled"], [Splits(train, calibration, evaluation)], _counts(pooled, evaluation), source


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
    feature_set: str = DEFAULT_FEATURE_SET,
    normalisation: str = LOCAL,
) -> dict[str, Any]:
    """Train on pooled normal traffic, calibrate, evaluate; write the run folder.

    ``seed`` fixes the initial weights and the shuffling, ``split_seed`` (default: ``seed``) the
    train / calibration / evaluation split of the rows. ``normalisation="local"`` scales each device's rows
    and scores with that device's own statistics, as the federation does (``RUN/devices/<name>/model`` are
    the complete bundles); ``"global"`` fits one min-max scaler on the pooled rows.
    """
    out = Path(out)
    split_seed = seed if split_seed is None else split_seed
    check_normalisation(normalisation)
    names = feature_names(feature_set)
    t0 = time.monotonic()
    devices, splits, counts, source = _load_parts(data, train_csv, eval_csv, split_seed, feature_set,
                                                    out / "cache")
    if normalisation == GLOBAL and len(splits) > 1:
        splits = [Splits(*(Traffic.concat([getattr(s, part) for s in splits])
                           for part in ("train", "calibration", "evaluation")))]
        devices = ["pooled"]
    if any(len(s.train) == 0 or len(s.calibration) == 0 for s in splits):
        raise ValueError("no normal rows to train on after cleaning (see the rejected-row counts)")

    parts = make_parts(devices, splits, SCALER_OF[normalisation])
    with torch.random.fork_rng():  # seeded initial weights: the same command gives the same model
        torch.manual_seed(seed)
        model = Autoencoder(len(names), members=members)
    result, threshold = fit_shared(model, parts, TrainConfig(epochs=epochs, seed=seed), quantile)
    histograms = evaluation_histograms(model, parts)
    metrics = metrics_from_histograms(histograms, threshold)
    metadata = {"source": "centralized", "feature_set": feature_set}
    if len(parts) == 1:  # one device (or pooled rows): its complete bundle is the run's model
        bundle = save_bundle(out / "model", part_bundle(
            model, parts[0].scaler, parts[0].residual, threshold, quantile=quantile, feature_names=names,
            metadata={**metadata, "normalisation": normalisation}))
    else:
        bundle = save_device_bundles(out, model, parts, threshold, quantile=quantile, feature_names=names,
                                     metadata=metadata)
    history = [{"epoch": i + 1, "train_loss": loss} for i, loss in enumerate(result.epoch_losses)]
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
            "feature_set": feature_set,
            "normalisation": normalisation,
            "rows": {part: sum(len(getattr(s, part)) for s in splits)
                     for part in ("train", "calibration", "evaluation")},
            "rejected": counts.get("rejected", {}),
            "label_notes": counts.get("label_notes", {}),
            "train_seconds": result.seconds,
            "seconds": time.monotonic() - t0,
        },
    )


def _stage(detector: Detector) -> ExtraFeatures | None:
    """The window stage a bundle's features need (None for packet features); a bundle without a scaler
    (a federation's global part under per-device normalisation) cannot score."""
    if detector.scaler is None:
        raise ValueError("this bundle normalises per device and holds no scaler: pass a device's bundle, "
                         "RUN/devices/<name>/model")
    if detector.feature_names is None:
        raise ValueError("the bundle does not name its features")
    return stage_for(feature_set_of(detector.feature_names))


def evaluate_csvs(model: Path, csvs: list[Path], out: Path) -> dict[str, Any]:
    """Metrics of a trained bundle on labelled CSVs, written to ``out``."""
    import json

    detector = Detector.load(model_dir(model))
    traffic = load_traffic(csvs, extra=_stage(detector))
    assert detector.threshold is not None
    metrics = metrics_from_histograms(class_histograms(detector, traffic), detector.threshold)
    metrics["rejected"] = traffic.rejected
    metrics["label_notes"] = traffic.label_notes
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return metrics


class ScoreReport(NamedTuple):
    scored: int
    flagged: int
    rejected: dict[str, int]  # per reason, non-zero only
    read: int  # data rows: scored + rejected
    label_notes: dict[str, int]  # scored rows of a labelled file whose label columns needed a decision


def score_csv(model: Path, csv_path: Path, out: Path) -> ScoreReport:
    """Score every usable row: ``row, score, anomaly`` (row = 0-based data row of the input).

    Raises
    ------
    ValueError
        Not one row could be scored (the message says why the rows were rejected).
    """
    detector = Detector.load(model_dir(model))
    from iotad.data.loader import read_header
    from iotad.data.schema import LABEL_COLUMN

    labelled = LABEL_COLUMN in read_header(csv_path)
    traffic = load_traffic([csv_path], dedupe=False, labelled=labelled, extra=_stage(detector))
    rejected = {k: v for k, v in traffic.rejected.items() if v}
    if len(traffic) == 0:
        why = ", ".join(f"{k} {v}" for k, v in rejected.items()) or "no data rows"
        raise ValueError(f"{csv_path}: no valid row to score ({traffic.rows_read} read; rejected: {why})")
    scores = detector.decision_function(traffic.features)
    flags = detector.predict_scores(scores)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "score", "anomaly"])
        for row, score, flag in zip(traffic.row_index.tolist(), scores.tolist(), flags.tolist(), strict=True):
            w.writerow([row, repr(float(score)), int(flag)])
    notes = {k: v for k, v in traffic.label_notes.items() if v}
    return ScoreReport(len(traffic), int(np.sum(flags)), rejected, traffic.rows_read, notes)
