"""One model, each device's own normalisation: the centralised side of per-device normalisation.

The federation trains one set of weights while every device scales its inputs and its score with
statistics of its own normal rows (:mod:`iotad.core.normalisation`). The centralised baseline does
the same with all rows in one place, so the two compare like for like: each device part is scaled
by its own scaler, the model trains on the union, each part gets its own residual scale, and the
threshold is the quantile of the merged calibration histograms, as the federation computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core.bundle import Bundle, save_bundle
from iotad.core.evaluation import ClassHistograms
from iotad.core.model import Autoencoder
from iotad.core.normalisation import AnyScaler, fit_scaler
from iotad.core.preprocessing import ResidualScale
from iotad.core.scoring import reconstruction_errors, residual_sumsq
from iotad.core.threshold import error_histogram, threshold_from_histogram
from iotad.core.train import TrainConfig, TrainResult, get_weights, train_autoencoder
from iotad.data.schema import NORMAL
from iotad.data.splits import Splits


@dataclass
class DevicePart:
    """A device's rows and the normalisation fitted on its normal training rows."""

    name: str
    splits: Splits
    scaler: AnyScaler
    residual: ResidualScale | None = None


def scores(model: Autoencoder, part: DevicePart, features: np.ndarray) -> np.ndarray:
    """Anomaly scores of ``features`` under the device's own scaler and residual scale."""
    weights = None if part.residual is None else part.residual.weights
    return reconstruction_errors(model, part.scaler.transform(features), feature_weights=weights)


def fit_shared(
    model: Autoencoder, parts: Sequence[DevicePart], cfg: TrainConfig, quantile: float
) -> tuple[TrainResult, float]:
    """Train ``model`` on every part's scaled training rows, set each part's residual scale; the merged
    calibration threshold."""
    x = np.concatenate([p.scaler.transform(p.splits.train.features) for p in parts])
    result = train_autoencoder(model, x, cfg)
    for p in parts:
        xp = p.scaler.transform(p.splits.train.features)
        p.residual = ResidualScale(count=len(xp), sumsq=residual_sumsq(model, xp))
    hist = np.sum([error_histogram(scores(model, p, p.splits.calibration.features)) for p in parts], axis=0)
    return result, threshold_from_histogram(hist, quantile)


def evaluation_histograms(model: Autoencoder, parts: Sequence[DevicePart]) -> ClassHistograms:
    """Per-class score histograms of every part's evaluation rows, merged."""
    merged = ClassHistograms({})
    for p in parts:
        ev = p.splits.evaluation
        types = np.where(ev.labels == 1, ev.attack_types, NORMAL)
        merged = merged.merge(ClassHistograms.of(scores(model, p, ev.features), types))
    return merged


def make_parts(names: Sequence[str], splits: Sequence[Splits], scaler_kind: str) -> list[DevicePart]:
    return [DevicePart(n, s, fit_scaler(s.train.features, scaler_kind)) for n, s in zip(names, splits, strict=True)]


def part_bundle(
    model: Autoencoder, scaler: AnyScaler | None, residual: ResidualScale | None, threshold: float, *,
    quantile: float, feature_names: Sequence[str], metadata: dict[str, Any],
) -> Bundle:
    """The trained model with one part's normalisation (or none: the shared weights and threshold only)."""
    return Bundle(directory=None, n_features=model.n_features, feature_names=list(feature_names),
                  hidden=model.hidden, dropout=model.dropout, members=model.members,
                  arrays=tuple(get_weights(model)), scaler=scaler, residual_scale=residual, threshold=threshold,
                  quantile=quantile, metadata=metadata)


def save_device_bundles(
    out: Path, model: Autoencoder, parts: Sequence[DevicePart], threshold: float, *, quantile: float,
    feature_names: Sequence[str], metadata: dict[str, Any],
) -> Path:
    """``out/devices/<name>/model`` per device (complete bundles), and ``out/model`` with the shared weights
    and threshold only (no scaler: it is per device). Returns the latter."""
    common: dict[str, Any] = {"quantile": quantile, "feature_names": feature_names,
                              "metadata": {**metadata, "normalisation": "local"}}
    for p in parts:
        save_bundle(out / "devices" / p.name / "model", part_bundle(model, p.scaler, p.residual, threshold, **common))
    return save_bundle(out / "model", part_bundle(model, None, None, threshold, **common))
