"""The model bundle on disk: writing it atomically and reading it back, without torch.

Layout (a directory)::

    bundle.json   format, version, n_features, feature_names, model hyper-params, scaler, residual_scale
                  (optional: absent or null means plain MSE scores), threshold, quantile, round, metadata,
                  and the weights file's sha256 and array names
    weights.npz   one array per state_dict entry (no pickle)

:func:`write_bundle` writes a temporary sibling directory and swaps it in with one rename (an atomic
exchange on Linux when the bundle already exists), because a device agent may hot-reload the bundle while
it is being rewritten. :func:`~iotad.core.bundle_read.read_bundle` checks the weights' sha256 and retries
when the bundle changed under it. The torch :class:`~iotad.core.detector.Detector` and the device agent's
:class:`~iotad.edge.inference.NumpyDetector` both go through these two functions. :func:`save_bundle` is
the one place that assembles ``bundle.json``: the torch detector saves through it, and the aggregator's
checkpoints (:mod:`iotad.fl.checkpoint`) write the global weights through it with
:func:`bundle_from_weights`, without torch.

This module must not import torch, directly or indirectly (a test checks it in a fresh interpreter).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core.normalisation import AnyScaler
from iotad.core.preprocessing import ResidualScale
from iotad.core.shapes import expected_shapes, state_dict_names, weights_mismatch

BUNDLE_FORMAT = "iotad-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS_NPZ = "weights.npz"
DEFAULT_QUANTILE = 0.99


class BundleError(ValueError):
    """A model bundle is missing, malformed or does not fit the expected features."""


class BundleChanged(Exception):
    """The bundle changed while being read (a rewrite is under way): read it again."""


@dataclass(frozen=True)
class Bundle:
    """Everything a bundle holds, validated (see :func:`read_bundle`).

    Attributes
    ----------
    directory : Path or None
        Where it was read from; None for a bundle assembled in memory (:func:`bundle_from_weights`).
    n_features : int
        Input width of the model, the scaler and the residual scale.
    feature_names : list of str or None
        Feature column names, when the bundle stores them.
    hidden, dropout, members
        Autoencoder shape (:class:`iotad.core.model.Autoencoder`); ``members`` is 1 in bundles that predate
        ensembles.
    arrays : tuple of np.ndarray
        Model weights in ``state_dict`` order: (weight (out, in), bias (out,)) per linear layer, member by
        member.
    scaler : Scaler, QuantileScaler or None
        None in a federation's global bundle under per-device normalisation: each device's own bundle
        carries its scaler; this one only the shared weights and threshold.
    residual_scale : ResidualScale or None
        One column per feature and member; None: plain reconstruction MSE scores.
    threshold : float or None
        None: the bundle can score but not flag.
    quantile, round, metadata
        As written by the trainer.
    """

    directory: Path | None
    n_features: int
    feature_names: list[str] | None
    hidden: tuple[int, ...]
    dropout: float
    members: int
    arrays: tuple[np.ndarray, ...]
    scaler: AnyScaler | None
    residual_scale: ResidualScale | None
    threshold: float | None
    quantile: float = DEFAULT_QUANTILE
    round: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def write_bundle(directory: str | Path, meta: dict[str, Any], arrays: Sequence[np.ndarray], names: list[str]) -> Path:
    """Write a bundle to ``directory`` atomically (readers see the old or the new bundle).

    ``meta`` is ``bundle.json`` without its format, version and weights entries (added here); ``arrays`` are
    the model weights in ``state_dict`` order and ``names`` their ``state_dict`` keys.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with open(tmp / WEIGHTS_NPZ, "wb") as f:
            named: dict[str, Any] = {f"w{i:03d}": a for i, a in enumerate(arrays)}
            np.savez(f, **named)
            f.flush()
            os.fsync(f.fileno())
        digest = hashlib.sha256((tmp / WEIGHTS_NPZ).read_bytes()).hexdigest()
        full = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **meta,
                "weights": {"file": WEIGHTS_NPZ, "sha256": digest, "names": names}}
        # json.dumps rejects NaN here: metadata must be JSON-clean (None for undefined values).
        text = json.dumps(full, indent=2, allow_nan=False)
        with open(tmp / BUNDLE_JSON, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_bundle(directory: str | Path, bundle: Bundle) -> Path:
    """Write ``bundle`` to ``directory`` atomically (see :func:`write_bundle`); returns the directory."""
    meta = {
        "n_features": bundle.n_features,
        "feature_names": bundle.feature_names,
        "model": {"n_features": bundle.n_features, "hidden": list(bundle.hidden), "dropout": bundle.dropout,
                  "members": bundle.members},
        "scaler": None if bundle.scaler is None else bundle.scaler.to_dict(),
        "residual_scale": None if bundle.residual_scale is None else bundle.residual_scale.to_dict(),
        "threshold": bundle.threshold,
        "quantile": bundle.quantile,
        "round": int(bundle.round),
        "metadata": bundle.metadata,
    }
    names = state_dict_names(bundle.hidden, bundle.dropout, bundle.members)
    return write_bundle(directory, meta, bundle.arrays, names)


def bundle_from_weights(
    weights: Sequence[np.ndarray],
    scaler: AnyScaler | None,
    threshold: float | None,
    *,
    hidden: Sequence[int],
    dropout: float,
    quantile: float = DEFAULT_QUANTILE,
    round: int = 0,
    feature_names: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    residual_scale: ResidualScale | None = None,
) -> Bundle:
    """An in-memory bundle of federated state (global weights in ``state_dict`` order, scaler, residual
    scale, threshold), checked; the ensemble size follows from the number of weight arrays.

    Raises
    ------
    ValueError
        Feature names, weights or residual scale that do not fit (:class:`BundleError` for the weights).
    """
    if scaler is not None:
        n = scaler.n_features
    elif weights and np.ndim(weights[0]) == 2:
        n = int(np.shape(weights[0])[1])  # the first layer's weight is (hidden, n_features)
    else:
        raise BundleError("cannot tell the input width: no scaler and no first-layer weight")
    if feature_names is not None and len(feature_names) != n:
        raise ValueError(f"{len(feature_names)} feature names for {n} features")
    members = model_members(weights, n, hidden)
    if residual_scale is not None and residual_scale.n_features != n * members:
        raise ValueError(f"residual scale has {residual_scale.n_features} columns, the model's residual "
                         f"{n * members}")
    return Bundle(
        directory=None,
        n_features=n,
        feature_names=None if feature_names is None else list(feature_names),
        hidden=tuple(int(h) for h in hidden),
        dropout=float(dropout),
        members=members,
        # The model's parameters are float32 (torch's default dtype): stored as the torch detector stores
        # them after loading these weights (C order, float32 copies).
        arrays=tuple(np.array(w, dtype=np.float32, order="C") for w in weights),
        scaler=scaler,
        residual_scale=residual_scale,
        threshold=None if threshold is None else float(threshold),
        quantile=float(quantile),
        round=int(round),
        metadata=dict(metadata or {}),
    )


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


def model_members(weights: Sequence[Any], n_features: int, hidden: Sequence[int]) -> int:
    """Ensemble size of the :class:`iotad.core.model.Autoencoder` whose ``state_dict`` arrays are ``weights``.

    Raises
    ------
    BundleError
        The arrays do not make whole members of that shape.
    """
    per_member = len(expected_shapes(n_features, hidden))
    if not weights or len(weights) % per_member:
        raise BundleError(f"{len(weights)} weight arrays do not make whole members of {per_member} arrays")
    members = len(weights) // per_member
    problem = weights_mismatch(weights, n_features, hidden, members)
    if problem:
        raise BundleError(f"weights do not fit the model: {problem}")
    return members
