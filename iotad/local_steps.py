"""What one device computes in each federated phase: pure functions, no Flower.

Every function takes the device's splits plus the global state it was sent and
returns aggregates only (statistics, weights, histograms, counts), never rows or
per-row errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iotad.data.schema import FEATURE_NAMES, NORMAL
from iotad.data.splits import Splits
from iotad.detector import detector_from_weights
from iotad.evaluation import ClassHistograms, Confusion, confusion_from_errors
from iotad.model import Autoencoder
from iotad.preprocessing import FeatureStats, Scaler
from iotad.threshold import error_histogram
from iotad.train import TrainConfig, TrainResult, get_weights, reconstruction_errors, set_weights, train_autoencoder


def feature_stats(splits: Splits) -> FeatureStats:
    """Scaling statistics of the device's normal training rows."""
    return FeatureStats.of(splits.train.features)


def _model(weights: Sequence[np.ndarray], n_features: int) -> Autoencoder:
    model = Autoencoder(n_features)
    set_weights(model, list(weights))
    return model


def train(
    splits: Splits, weights: Sequence[np.ndarray], scaler: Scaler, cfg: TrainConfig
) -> tuple[list[np.ndarray], TrainResult]:
    """Train the global model on local normal traffic; FedProx if ``cfg.proximal_mu`` > 0."""
    model = _model(weights, splits.train.features.shape[1])
    global_params = [w.copy() for w in weights] if cfg.proximal_mu > 0 else None
    result = train_autoencoder(model, scaler.transform(splits.train.features), cfg, global_params=global_params)
    return get_weights(model), result


def calibration_histogram(splits: Splits, weights: Sequence[np.ndarray], scaler: Scaler) -> np.ndarray:
    """Histogram of the global model's errors on held-out normal rows (fixed bins)."""
    model = _model(weights, splits.calibration.features.shape[1])
    return error_histogram(reconstruction_errors(model, scaler.transform(splits.calibration.features)))


@dataclass(frozen=True)
class LocalEvaluation:
    histograms: ClassHistograms
    confusion: Confusion


def evaluate(
    splits: Splits, weights: Sequence[np.ndarray], scaler: Scaler, threshold: float
) -> LocalEvaluation:
    """Per-class score histograms and confusion counts of the global model at ``threshold``."""
    ev = splits.evaluation
    model = _model(weights, ev.features.shape[1])
    errors = reconstruction_errors(model, scaler.transform(ev.features))
    types = np.where(ev.labels == 1, ev.attack_types, NORMAL)
    return LocalEvaluation(ClassHistograms.of(errors, types), confusion_from_errors(errors, ev.labels, threshold))


def save_global_bundle(
    directory: Path, weights: Sequence[np.ndarray], scaler: Scaler, threshold: float, server_round: int,
    *, quantile: float,
) -> Path:
    """Write the global model the device just evaluated as the bundle its agent serves."""
    detector = detector_from_weights(
        weights, scaler, threshold, quantile=quantile, round=server_round, feature_names=FEATURE_NAMES,
        metadata={"source": "federated"},
    )
    return detector.save(directory)
