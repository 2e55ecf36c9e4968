"""Torch-free scoring with a model bundle: the device agent's detector.

:class:`NumpyDetector` runs the forward pass of :class:`iotad.core.model.Autoencoder` with numpy (float32 GEMMs
through numpy's BLAS) and scores exactly as :meth:`iotad.core.detector.Detector.decision_function`: scale, rebuild,
square the residual, weight it by the bundle's residual scale (or average it). The agent needs only this
forward pass; importing torch for it would cost the always-on process a few hundred MB of memory.

This module must not import torch, directly or indirectly (a test checks it in a fresh interpreter).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from iotad.core.bundle import Bundle, BundleError
from iotad.core.bundle_read import read_bundle
from iotad.core.normalisation import AnyScaler
from iotad.core.preprocessing import ResidualScale
from iotad.core.shapes import weights_mismatch

log = logging.getLogger(__name__)

#: Rows per forward pass (as ``iotad.core.scoring.SCORE_BATCH``): memory is ~batch * widest layer * 4 bytes.
SCORE_BATCH = 8192


class Scorer(Protocol):
    """What the agent needs from a detector; :class:`NumpyDetector` and the torch
    :class:`iotad.core.detector.Detector` both provide it."""

    threshold: float | None
    quantile: float
    round: int
    metadata: dict[str, Any]
    n_features: int
    feature_names: list[str] | None

    def decision_function(self, features: np.ndarray) -> np.ndarray: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...

    def predict_scores(self, scores: np.ndarray) -> np.ndarray: ...


class NumpyDetector:
    """Scores rows with a bundle's autoencoder in numpy; same scores and flags as the torch detector.

    Every linear layer is followed by ReLU except the last, followed by Tanh (dropout is the identity at
    inference); an ensemble's score is the mean over its members' residuals. Computed in float32 in
    batches of :data:`SCORE_BATCH` rows.

    Parameters
    ----------
    bundle : Bundle
        A bundle read by :func:`iotad.core.bundle_read.read_bundle`.

    Raises
    ------
    BundleError
        The bundle's weights do not fit its model shape.
    """

    def __init__(self, bundle: Bundle) -> None:
        problem = weights_mismatch(bundle.arrays, bundle.n_features, bundle.hidden, bundle.members)
        if problem:
            raise BundleError(f"{bundle.directory}: weights do not fit the model: {problem}")
        if bundle.scaler is None:
            raise BundleError(f"{bundle.directory}: no scaler: a federation's global bundle under per-device "
                              "normalisation cannot score; a device scores with its own bundle")
        # Weights transposed once to (in, out), contiguous: a batch is then x @ w + b per layer.
        layers = [
            (np.ascontiguousarray(w.T, dtype=np.float32), np.asarray(b, dtype=np.float32))
            for w, b in zip(bundle.arrays[0::2], bundle.arrays[1::2], strict=True)
        ]
        per_member = len(layers) // bundle.members
        self._members = [layers[i : i + per_member] for i in range(0, len(layers), per_member)]
        self.n_features = bundle.n_features
        self.feature_names: list[str] | None = bundle.feature_names
        self.hidden = bundle.hidden
        self.scaler: AnyScaler = bundle.scaler
        self.residual_scale: ResidualScale | None = bundle.residual_scale
        self._feature_weights = None if bundle.residual_scale is None else bundle.residual_scale.weights
        self.threshold: float | None = bundle.threshold
        self.quantile: float = bundle.quantile
        self.round: int = bundle.round
        self.metadata: dict[str, Any] = dict(bundle.metadata)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        feature_names: Sequence[str] | None = None,
        n_features: int | None = None,
        retries: int = 5,
    ) -> NumpyDetector:
        """Load a bundle (see :func:`iotad.core.bundle_read.read_bundle` for the checks and the retries).

        Raises
        ------
        BundleError
            Missing or malformed bundle, a feature mismatch, or weights that do not fit the model.
        """
        return cls(read_bundle(directory, feature_names=feature_names, n_features=n_features, retries=retries))

    # -- scoring -----------------------------------------------------------------------------------------

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores per row (float64); higher = more anomalous.

        The mean over features of ``residual_j ** 2 / residual_scale.variance[j]``, or the plain
        reconstruction MSE for a bundle without a residual scale (as
        :meth:`iotad.core.detector.Detector.decision_function`).
        """
        shape = np.shape(features)
        if len(shape) != 2 or shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (rows, {self.n_features}), got {shape}")
        x = self.scaler.transform(features)  # float32
        n = x.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        # Scratch buffers for one batch, reused across the batches of this call (none kept on the instance,
        # so concurrent calls are safe).
        rows = min(n, SCORE_BATCH)
        bufs = [np.empty((rows, b.shape[0]), dtype=np.float32) for _, b in self._members[0]]
        for start in range(0, n, SCORE_BATCH):
            xb = x[start : start + SCORE_BATCH]
            out[start : start + len(xb)] = self._batch_errors(xb, [buf[: len(xb)] for buf in bufs])
        return out

    def _batch_errors(self, xb: np.ndarray, bufs: list[np.ndarray]) -> np.ndarray:
        err = np.zeros(len(xb), dtype=np.float32)
        n = self.n_features
        for k, layers in enumerate(self._members):
            h = xb
            last = len(layers) - 1
            for i, ((w, b), buf) in enumerate(zip(layers, bufs, strict=True)):
                np.matmul(h, w, out=buf)
                buf += b
                if i < last:
                    np.maximum(buf, 0.0, out=buf)
                else:
                    np.tanh(buf, out=buf)
                h = buf
            h -= xb  # residual, in the output layer's buffer
            np.square(h, out=h)
            if self._feature_weights is None:
                err += np.sum(h, axis=1) / (n * len(self._members))
            else:
                err += h @ self._feature_weights[k * n : (k + 1) * n]
        return err.astype(np.float64)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """0/1 (int8) per row: 1 when the score is ``>= threshold``."""
        return self.predict_scores(self.decision_function(features))

    def predict_scores(self, scores: np.ndarray) -> np.ndarray:
        """Apply the threshold to scores from :meth:`decision_function`."""
        if self.threshold is None:
            raise RuntimeError("detector has no threshold: the bundle has none")
        return (np.asarray(scores) >= self.threshold).astype(np.int8)


# OpenBLAS's setter as exported by plain builds and by the scipy-openblas build numpy's wheels bundle.
_OPENBLAS_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)


def set_blas_threads(n: int) -> list[str]:
    """Set the thread count of every OpenBLAS loaded in this process (numpy's matmul); returns their paths.

    OpenBLAS reads ``OPENBLAS_NUM_THREADS`` only when it loads, and numpy is loaded long before a command
    runs, so the count is set through the library's own setter (what threadpoolctl does). Linux only (the
    loaded libraries are found in ``/proc/self/maps``); an empty list means nothing was changed (another
    BLAS, or another OS).
    """
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    done = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, name) for name in _OPENBLAS_SETTERS if hasattr(lib, name)), None)
        if setter is None:
            continue
        setter.argtypes = [ctypes.c_int]
        setter.restype = None
        setter(max(1, int(n)))
        done.append(path)
    if not done:
        log.info("no OpenBLAS found in this process: BLAS thread count left as it is")
    return done
