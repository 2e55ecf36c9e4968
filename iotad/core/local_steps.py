"""What one device computes in each federated phase: pure functions, no Flower.

Every function takes the device's splits plus the global state it was sent and
returns aggregates only (statistics, weights, histograms, counts), never rows or
per-row errors.

A process that serves many messages (a simulation's actor) keeps the device's own
normalisation between them: it is a deterministic function of the training rows (and,
for the residual scale, of the weights), so it is looked up by their digest, never stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from iotad.core.detector import detector_from_weights
from iotad.core.evaluation import ClassHistograms, Confusion, confusion_from_errors
from iotad.core.model import Autoencoder
from iotad.core.normalisation import QUANTILE, AnyScaler, fit_scaler
from iotad.core.preprocessing import FeatureStats, ResidualScale
from iotad.core.scoring import reconstruction_errors, residual_sumsq
from iotad.core.threshold import error_histogram
from iotad.core.train import TrainConfig, TrainResult, get_weights, set_weights, train_autoencoder
from iotad.data.schema import NORMAL
from iotad.data.splits import Splits


def feature_stats(splits: Splits) -> FeatureStats:
    """Scaling statistics of the device's normal training rows."""
    return FeatureStats.of(splits.train.features)


T = TypeVar("T")
_MEMO_SIZE = 4  # devices a process may serve (a simulation actor serves several)
_scalers: dict[bytes, AnyScaler] = {}
_residuals: dict[bytes, ResidualScale] = {}


def _digest(*arrays: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.digest()


def _remember(memo: dict[bytes, T], key: bytes, value: T) -> None:
    if len(memo) >= _MEMO_SIZE:
        del memo[next(iter(memo))]  # oldest first
    memo[key] = value


def local_scaler(splits: Splits) -> AnyScaler:
    """The device's own scaler (per-device normalisation): fitted on its normal training rows only."""
    key = _digest(splits.train.features)
    scaler = _scalers.get(key)
    if scaler is None:
        scaler = fit_scaler(splits.train.features, QUANTILE)
        _remember(_scalers, key, scaler)
    return scaler


def local_residual(splits: Splits, weights: Sequence[np.ndarray]) -> ResidualScale:
    """The device's own residual scale under ``weights``, with its own scaler (the calibration and the
    evaluation of one round both need it)."""
    key = _digest(splits.train.features, *weights)
    residual = _residuals.get(key)
    if residual is None:
        residual = residual_stats(splits, weights, local_scaler(splits))
        _remember(_residuals, key, residual)
    return residual


def _model(weights: Sequence[np.ndarray], n_features: int) -> Autoencoder:
    model = Autoencoder.for_weights(weights, n_features)
    set_weights(model, list(weights))
    return model


def train(
    splits: Splits, weights: Sequence[np.ndarray], scaler: AnyScaler, cfg: TrainConfig
) -> tuple[list[np.ndarray], TrainResult]:
    """Train the global model on local normal traffic; FedProx if ``cfg.proximal_mu`` > 0."""
    model = _model(weights, splits.train.features.shape[1])
    global_params = [w.copy() for w in weights] if cfg.proximal_mu > 0 else None
    result = train_autoencoder(model, scaler.transform(splits.train.features), cfg, global_params=global_params)
    return get_weights(model), result


def residual_stats(splits: Splits, weights: Sequence[np.ndarray], scaler: AnyScaler) -> ResidualScale:
    """Per-feature sums of squared residuals of the global model on the device's normal training rows.

    Send ``count`` (int) and ``sumsq`` (one float per feature and ensemble member); the server sums both over devices
    (:meth:`ResidualScale.merge_all`) and scores with the merged scale's ``weights``.
    """
    model = _model(weights, splits.train.features.shape[1])
    x = scaler.transform(splits.train.features)
    return ResidualScale(count=len(x), sumsq=residual_sumsq(model, x))


def _scores(
    weights: Sequence[np.ndarray], scaler: AnyScaler, residual: ResidualScale | None, x: np.ndarray
) -> np.ndarray:
    model = _model(weights, x.shape[1])
    return reconstruction_errors(
        model, scaler.transform(x), feature_weights=None if residual is None else residual.weights
    )


def calibration_histogram(
    splits: Splits, weights: Sequence[np.ndarray], scaler: AnyScaler, residual: ResidualScale | None = None
) -> np.ndarray:
    """Histogram of the global model's scores on held-out normal rows (fixed bins)."""
    return error_histogram(_scores(weights, scaler, residual, splits.calibration.features))


@dataclass(frozen=True)
class LocalEvaluation:
    histograms: ClassHistograms
    confusion: Confusion


def evaluate(
    splits: Splits,
    weights: Sequence[np.ndarray],
    scaler: AnyScaler,
    threshold: float,
    residual: ResidualScale | None = None,
) -> LocalEvaluation:
    """Per-class score histograms and confusion counts of the global model at ``threshold``."""
    ev = splits.evaluation
    errors = _scores(weights, scaler, residual, ev.features)
    types = np.where(ev.labels == 1, ev.attack_types, NORMAL)
    return LocalEvaluation(ClassHistograms.of(errors, types), confusion_from_errors(errors, ev.labels, threshold))


def save_global_bundle(
    directory: Path, weights: Sequence[np.ndarray], scaler: AnyScaler, threshold: float, server_round: int,
    *, quantile: float, residual: ResidualScale | None = None, feature_names: Sequence[str] | None = None,
) -> Path:
    """Write the global model the device just evaluated as the bundle its agent serves.

    Raises
    ------
    OSError
        The bundle could not be written (a full disk): the message says so; the agent's bundle is unchanged.
    """
    detector = detector_from_weights(
        weights, scaler, threshold, quantile=quantile, round=server_round, feature_names=feature_names,
        metadata={"source": "federated"}, residual_scale=residual,
    )
    try:
        return detector.save(directory)
    except OSError as e:
        raise OSError(e.errno, f"model bundle of round {server_round} not written to {directory}: {e.strerror}; "
                               "the agent keeps serving the bundle it has") from e
