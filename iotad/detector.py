"""Anomaly detector in the PyOD spirit, and its on-disk bundle.

``fit`` learns the scaler, trains the autoencoder, measures the typical per-feature residual on the normal
training rows (:class:`~iotad.preprocessing.ResidualScale`) and sets the threshold from held-out normal
traffic; ``decision_function`` returns the mean squared z-score of the reconstruction residuals (each
feature's squared residual divided by its mean on normal training rows; plain MSE for a bundle without a
residual scale); higher = more anomalous. ``predict`` compares scores with the threshold, which is kept
apart from scoring (a federated round replaces it without retraining).

Bundle layout (a directory)::

    bundle.json   format, version, n_features, feature_names, model hyper-params, scaler, residual_scale
                  (optional: absent or null means plain MSE scores), threshold, quantile, round, metadata,
                  and the weights file's sha256 and array names
    weights.npz   one array per state_dict entry (no pickle)

:meth:`Detector.save` writes a temporary sibling directory and swaps it in with one rename (an atomic
exchange on Linux when the bundle already exists), because a device agent may hot-reload the bundle
while it is being rewritten. :meth:`Detector.load` checks the weights' sha256 and retries when the
bundle changed under it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iotad.model import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Autoencoder
from iotad.preprocessing import FeatureStats, ResidualScale, Scaler
from iotad.threshold import error_histogram, threshold_from_histogram
from iotad.train import (
    TrainConfig,
    TrainResult,
    get_weights,
    reconstruction_errors,
    residual_sumsq,
    set_weights,
    train_autoencoder,
)

BUNDLE_FORMAT = "iotad-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS_NPZ = "weights.npz"
DEFAULT_QUANTILE = 0.99


class BundleError(ValueError):
    """A model bundle is missing, malformed or does not fit the expected features."""


class Detector:
    """Autoencoder anomaly detector: scaler + model + threshold.

    Parameters
    ----------
    n_features : int
        Input width.
    hidden, dropout
        Autoencoder shape (see :class:`iotad.model.Autoencoder`).
    feature_names : sequence of str, optional
        Names of the feature columns, stored in the bundle and checked on load.
    """

    def __init__(
        self,
        n_features: int,
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        if feature_names is not None and len(feature_names) != n_features:
            raise ValueError(f"{len(feature_names)} feature names for {n_features} features")
        self.n_features = int(n_features)
        self.feature_names: list[str] | None = list(feature_names) if feature_names is not None else None
        self.model = Autoencoder(n_features, hidden, dropout)
        self.scaler: Scaler | None = None
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
    ) -> Detector:
        """Fit the scaler, the model and the residual scale on normal ``train_features``; threshold from the
        scores of held-out normal ``calibration_features`` (quantile ``quantile``, so FPR on them <= 1 - quantile).
        """
        self._check_features(train_features)
        self._check_features(calibration_features)
        if len(calibration_features) == 0:
            raise ValueError("calibration needs at least one held-out normal row")
        self.scaler = Scaler.from_stats(FeatureStats.of(train_features))
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
            raise RuntimeError("detector has no scaler: fit or load it first")
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

    def to_bundle_dict(self, weight_names: list[str], weights_sha256: str) -> dict[str, Any]:
        if self.scaler is None:
            raise RuntimeError("cannot save a detector without a scaler")
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "n_features": self.n_features,
            "feature_names": self.feature_names,
            "model": self.model.hyperparams(),
            "scaler": self.scaler.to_dict(),
            "residual_scale": None if self.residual_scale is None else self.residual_scale.to_dict(),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "round": int(self.round),
            "metadata": self.metadata,
            "weights": {"file": WEIGHTS_NPZ, "sha256": weights_sha256, "names": weight_names},
        }

    def save(self, directory: str | Path) -> Path:
        """Write the bundle to ``directory`` atomically (readers see the old or the new bundle)."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            names = list(self.model.state_dict().keys())
            arrays = get_weights(self.model)
            with open(tmp / WEIGHTS_NPZ, "wb") as f:
                named: dict[str, Any] = {f"w{i:03d}": a for i, a in enumerate(arrays)}
                np.savez(f, **named)
                f.flush()
                os.fsync(f.fileno())
            digest = _sha256(tmp / WEIGHTS_NPZ)
            # json.dumps rejects NaN here: metadata must be JSON-clean (None for undefined values).
            text = json.dumps(self.to_bundle_dict(names, digest), indent=2, allow_nan=False)
            with open(tmp / BUNDLE_JSON, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            _swap_in(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

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

        Raises
        ------
        BundleError
            Missing or malformed bundle, or a feature mismatch (clear one-line message).
        """
        last: Exception | None = None
        for attempt in range(max(retries, 1)):
            try:
                return cls._load_once(Path(directory), feature_names, n_features)
            except _Changed as e:  # rewritten while we read it: read again
                last = e
                time.sleep(0.02 * (attempt + 1))
        raise BundleError(f"{directory}: bundle kept changing while being read ({last})")

    @classmethod
    def _load_once(cls, d: Path, feature_names: Sequence[str] | None, n_features: int | None) -> Detector:
        try:
            meta = json.loads((d / BUNDLE_JSON).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            # A temporary sibling means a rewrite is under way (fallback swap): worth a retry.
            if any(d.parent.glob(f".{d.name}.tmp-*")):
                raise _Changed("bundle.json missing during a rewrite") from e
            raise BundleError(f"{d}: no model bundle ({BUNDLE_JSON} missing)") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{d / BUNDLE_JSON}: not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{d}: not an iotad model bundle")
        if int(meta.get("version", -1)) != BUNDLE_VERSION:
            raise BundleError(f"{d}: bundle version {meta.get('version')}, this iotad reads {BUNDLE_VERSION}")
        try:
            n = int(meta["n_features"])
            names = meta.get("feature_names")
            model_hp = meta["model"]
            wmeta = meta["weights"]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{d}: bundle.json lacks {e}") from e
        if n_features is not None and n != n_features:
            raise BundleError(f"{d}: model expects {n} features, the data has {n_features}")
        if feature_names is not None:
            if len(feature_names) != n:
                raise BundleError(f"{d}: model expects {n} features, the data has {len(feature_names)}")
            if names is not None and len(names) == n and list(names) != list(feature_names):
                diff = next(i for i, (a, b) in enumerate(zip(names, feature_names, strict=False)) if a != b)
                raise BundleError(
                    f"{d}: feature {diff} is {names[diff]!r} in the model but {feature_names[diff]!r} in the data"
                )
        wpath = d / str(wmeta.get("file", WEIGHTS_NPZ))
        try:
            raw = wpath.read_bytes()
        except FileNotFoundError as e:
            raise _Changed(f"{wpath.name} missing") from e
        if hashlib.sha256(raw).hexdigest() != wmeta.get("sha256"):
            raise _Changed("weights do not match bundle.json")
        det = cls(
            n,
            hidden=tuple(model_hp.get("hidden", DEFAULT_HIDDEN)),
            dropout=float(model_hp.get("dropout", DEFAULT_DROPOUT)),
            feature_names=names,
        )
        if int(model_hp.get("n_features", n)) != n:
            raise BundleError(f"{d}: model n_features {model_hp.get('n_features')} != bundle n_features {n}")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = [npz[f"w{i:03d}"] for i in range(len(npz.files))]
        try:
            set_weights(det.model, arrays)
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{d}: weights do not fit the model: {e}") from e
        det.scaler = Scaler.from_dict(meta["scaler"])
        if det.scaler.n_features != n:
            raise BundleError(f"{d}: scaler has {det.scaler.n_features} features, model {n}")
        rs = meta.get("residual_scale")
        if rs is not None:
            try:
                det.residual_scale = ResidualScale.from_dict(rs)
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"{d}: malformed residual_scale ({e})") from e
            if det.residual_scale.n_features != n:
                raise BundleError(f"{d}: residual scale has {det.residual_scale.n_features} features, model {n}")
        thr = meta.get("threshold")
        det.threshold = None if thr is None else float(thr)
        det.quantile = float(meta.get("quantile", DEFAULT_QUANTILE))
        det.round = int(meta.get("round", 0))
        det.metadata = dict(meta.get("metadata") or {})
        det.model.eval()
        return det


class _Changed(Exception):
    """The bundle changed while being read."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _swap_in(new: Path, target: Path) -> None:
    """Make ``new`` appear at ``target``; on return ``new`` holds the old bundle (or is gone)."""
    if not target.exists():
        try:
            os.rename(new, target)
            return
        except OSError:
            if not target.exists():
                raise
    if _exchange(new, target):
        return
    # Fallback (non-Linux or a filesystem without RENAME_EXCHANGE): a short window where the target is
    # missing; readers see the temp sibling and retry.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-old-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def detector_from_weights(
    weights: Sequence[np.ndarray],
    scaler: Scaler,
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
    save a bundle. Without ``residual_scale`` the detector scores plain reconstruction MSE."""
    det = Detector(scaler.n_features, hidden=hidden, dropout=dropout, feature_names=feature_names)
    set_weights(det.model, list(weights))
    det.model.eval()
    det.scaler = scaler
    if residual_scale is not None and residual_scale.n_features != scaler.n_features:
        raise ValueError(f"residual scale has {residual_scale.n_features} features, scaler {scaler.n_features}")
    det.residual_scale = residual_scale
    det.threshold = None if threshold is None else float(threshold)
    det.quantile = float(quantile)
    det.round = int(round)
    det.metadata = dict(metadata or {})
    return det
