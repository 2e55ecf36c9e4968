"""Anomaly detector in the PyOD spirit (torch model + scaler + residual scale + threshold).

``fit`` learns the scaler, trains the autoencoder, measures the typical per-feature residual on the normal
training rows (:class:`~iotad.core.preprocessing.ResidualScale`) and sets the threshold from held-out normal
traffic; ``decision_function`` returns the mean squared z-score of the reconstruction residuals (each
feature's squared residual divided by its mean on normal training rows; plain MSE for a bundle without a
residual scale); higher = more anomalous. ``predict`` compares scores with the threshold, which is kept
apart from scoring (a federated round replaces it without retraining).

The bundle (a directory: ``bundle.json`` + ``weights.npz``) is written and read by :mod:`iotad.core.bundle`,
which owns the format, the atomic swap and the torch-free reader the device agent shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The bundle format lives in iotad.core.bundle (torch-free); its names stay importable from here.
from iotad.core.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    BUNDLE_VERSION,
    DEFAULT_QUANTILE,
    WEIGHTS_NPZ,
    Bundle,
    BundleError,
    bundle_from_weights,
    save_bundle,
)
from iotad.core.bundle_read import read_bundle
from iotad.core.model import DEFAULT_DROPOUT, DEFAULT_HIDDEN, DEFAULT_MEMBERS, Autoencoder
from iotad.core.normalisation import QUANTILE, SCALER_KINDS, AnyScaler, fit_scaler
from iotad.core.preprocessing import ResidualScale
from iotad.core.scoring import reconstruction_errors, residual_sumsq
from iotad.core.threshold import error_histogram, threshold_from_histogram
from iotad.core.train import TrainConfig, TrainResult, get_weights, set_weights, train_autoencoder

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_JSON",
    "BUNDLE_VERSION",
    "DEFAULT_QUANTILE",
    "WEIGHTS_NPZ",
    "BundleError",
    "Detector",
    "detector_from_weights",
]


class Detector:
    """Autoencoder anomaly detector: scaler + model + threshold.

    Parameters
    ----------
    n_features : int
        Input width.
    hidden, dropout, members
        Autoencoder shape (see :class:`iotad.core.model.Autoencoder`).
    feature_names : sequence of str, optional
        Names of the feature columns, stored in the bundle and checked on load.
    """

    def __init__(
        self,
        n_features: int,
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        members: int = DEFAULT_MEMBERS,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        if feature_names is not None and len(feature_names) != n_features:
            raise ValueError(f"{len(feature_names)} feature names for {n_features} features")
        self.n_features = int(n_features)
        self.feature_names: list[str] | None = list(feature_names) if feature_names is not None else None
        self.model = Autoencoder(n_features, hidden, dropout, members)
        self.scaler: AnyScaler | None = None
        self.residual_scale: ResidualScale | None = None
        self.threshold: float | None = None
        self.quantile: float = DEFAULT_QUANTILE
        self.round: int = 0
        self.metadata: dict[str, Any] = {}
        self.train_result: TrainResult | None = None
        self.calibration_histogram: np.ndarray | None = None

    # -- fitting -----------------------------------------------------------------------------------------

    def fit(
        self,
        train_features: np.ndarray,
        calibration_features: np.ndarray,
        cfg: TrainConfig | None = None,
        quantile: float = DEFAULT_QUANTILE,
        scaler: str = QUANTILE,
    ) -> Detector:
        """Fit the scaler, the model and the residual scale on normal ``train_features``; threshold from the
        scores of held-out normal ``calibration_features`` (quantile ``quantile``, so FPR on them <= 1 - quantile).
        ``scaler`` is one of :data:`iotad.core.normalisation.SCALER_KINDS`.
        """
        if scaler not in SCALER_KINDS:
            raise ValueError(f"unknown scaler {scaler!r}; choose one of {', '.join(SCALER_KINDS)}")
        self._check_features(train_features)
        self._check_features(calibration_features)
        if len(calibration_features) == 0:
            raise ValueError("calibration needs at least one held-out normal row")
        self.scaler = fit_scaler(train_features, scaler)
        x = self.scaler.transform(train_features)
        self.residual_scale = None
        self.train_result = train_autoencoder(self.model, x, cfg or TrainConfig())
        self.residual_scale = ResidualScale(count=len(x), sumsq=residual_sumsq(self.model, x))
        self.calibrate(calibration_features, quantile)
        return self

    def calibrate(self, calibration_features: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
        """(Re)set the threshold from held-out normal rows without retraining; returns it."""
        hist = error_histogram(self.decision_function(calibration_features))
        self.calibration_histogram = hist
        self.threshold = threshold_from_histogram(hist, quantile)
        self.quantile = float(quantile)
        return self.threshold

    # -- scoring -----------------------------------------------------------------------------------------

    def _check_features(self, features: np.ndarray) -> None:
        shape = np.shape(features)
        if len(shape) != 2 or shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (rows, {self.n_features}), got {shape}")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores per row (float64); higher = more anomalous.

        The mean over features of ``residual_j ** 2 / residual_scale.variance[j]`` (~1 on average for normal
        training rows), or the plain reconstruction MSE when the detector has no residual scale.
        """
        if self.scaler is None:
            raise RuntimeError("detector has no scaler: fit it, or load a bundle that has one (under per-device "
                               "normalisation a federation's global bundle has none: use a device's bundle)")
        self._check_features(features)
        weights = None if self.residual_scale is None else self.residual_scale.weights
        return reconstruction_errors(self.model, self.scaler.transform(features), feature_weights=weights)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """0/1 (int8) per row: 1 when the score is ``>= threshold``."""
        return self.predict_scores(self.decision_function(features))

    def predict_scores(self, scores: np.ndarray) -> np.ndarray:
        """Apply the threshold to scores from :meth:`decision_function`."""
        if self.threshold is None:
            raise RuntimeError("detector has no threshold: fit, calibrate or load it first")
        return (np.asarray(scores) >= self.threshold).astype(np.int8)

    # -- bundle ------------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the bundle to ``directory`` atomically (readers see the old or the new bundle)."""
        if self.scaler is None:
            raise RuntimeError("cannot save a detector without a scaler")
        return save_bundle(directory, Bundle(
            directory=None, n_features=self.n_features, feature_names=self.feature_names, hidden=self.model.hidden,
            dropout=self.model.dropout, members=self.model.members, arrays=tuple(get_weights(self.model)),
            scaler=self.scaler, residual_scale=self.residual_scale, threshold=self.threshold, quantile=self.quantile,
            round=self.round, metadata=self.metadata,
        ))

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        feature_names: Sequence[str] | None = None,
        n_features: int | None = None,
        retries: int = 5,
    ) -> Detector:
        """Load a bundle; ``feature_names`` / ``n_features`` (when given) must match the bundle's.

        Reading and validation are :func:`iotad.core.bundle_read.read_bundle` (shared with the torch-free
        :class:`iotad.edge.inference.NumpyDetector`); this adds the torch model.

        Raises
        ------
        BundleError
            Missing or malformed bundle, a feature mismatch, or weights that do not fit the model (clear
            one-line message).
        """
        return cls.from_bundle(read_bundle(directory, feature_names=feature_names, n_features=n_features,
                                           retries=retries))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Detector:
        """Build the torch detector of a bundle (read by :func:`iotad.core.bundle_read.read_bundle`, or assembled by
        :func:`iotad.core.bundle.bundle_from_weights`)."""
        det = cls(bundle.n_features, hidden=bundle.hidden, dropout=bundle.dropout, members=bundle.members,
                  feature_names=bundle.feature_names)
        try:
            set_weights(det.model, bundle.arrays)
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{bundle.directory}: weights do not fit the model: {e}") from e
        det.scaler = bundle.scaler
        det.residual_scale = bundle.residual_scale
        det.threshold = bundle.threshold
        det.quantile = bundle.quantile
        det.round = bundle.round
        det.metadata = dict(bundle.metadata)
        det.model.eval()
        return det


def detector_from_weights(
    weights: Sequence[np.ndarray],
    scaler: AnyScaler | None,
    threshold: float | None,
    *,
    quantile: float = DEFAULT_QUANTILE,
    round: int = 0,
    feature_names: Sequence[str] | None = None,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    dropout: float = DEFAULT_DROPOUT,
    metadata: dict[str, Any] | None = None,
    residual_scale: ResidualScale | None = None,
) -> Detector:
    """Assemble a detector from federated state (global weights, scaler, residual scale, threshold), e.g. to
    save a bundle; the ensemble size follows from the number of weight arrays. Without ``residual_scale``
    the detector scores plain reconstruction MSE. The checks are :func:`iotad.core.bundle.bundle_from_weights`
    (shared with the aggregator's torch-free checkpoints)."""
    return Detector.from_bundle(bundle_from_weights(
        weights, scaler, threshold, hidden=hidden, dropout=dropout, quantile=quantile, round=round,
        feature_names=feature_names, metadata=metadata, residual_scale=residual_scale,
    ))
