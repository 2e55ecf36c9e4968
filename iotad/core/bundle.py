"""The model bundle on disk: writing it atomically and reading it back, without torch.

Layout (a directory)::

    bundle.json   format, version, n_features, feature_names, model hyper-params, scaler, residual_scale
                  (optional: absent or null means plain MSE scores), threshold, quantile, round, metadata,
                  and the weights file's sha256 and array names
    weights.npz   one array per state_dict entry (no pickle)

:func:`write_bundle` writes a temporary sibling directory and swaps it in with one rename (an atomic
exchange on Linux when the bundle already exists), because a device agent may hot-reload the bundle while
it is being rewritten. :func:`read_bundle` checks the weights' sha256 and retries when the bundle changed
under it. The torch :class:`~iotad.core.detector.Detector` and the device agent's
:class:`~iotad.edge.inference.NumpyDetector` both go through these two functions. :func:`save_bundle` is the one
place that assembles ``bundle.json``: the torch detector saves through it, and the aggregator's checkpoints
(:mod:`iotad.fl.checkpoint`) write the global weights through it with :func:`bundle_from_weights`, without torch.

This module must not import torch, directly or indirectly (a test checks it in a fresh interpreter).
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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core.preprocessing import ResidualScale, Scaler

BUNDLE_FORMAT = "iotad-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS_NPZ = "weights.npz"
DEFAULT_QUANTILE = 0.99

# The default model shape (iotad.core.model.Autoencoder).
DEFAULT_HIDDEN: tuple[int, ...] = (128, 64, 32, 16)
# Measured on synthetic traffic (docs/benchmarks.md, "Ensemble"): averaging 4 members' scores cut the spread
# of F1 between training seeds to a third to a half, at ~3.7x the training and 2-4x the scoring compute.
DEFAULT_MEMBERS = 4
# The seed used 0.2; measured on synthetic traffic it only slows convergence (higher loss and lower ROC-AUC at
# equal epochs), and the bottleneck already regularises.
DEFAULT_DROPOUT = 0.0


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
    scaler : Scaler
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
    scaler: Scaler
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
        "scaler": bundle.scaler.to_dict(),
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
    scaler: Scaler,
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
    n = scaler.n_features
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


def autoencoder_widths(n_features: int, hidden: Sequence[int]) -> list[int]:
    """Layer widths of :class:`iotad.core.model.Autoencoder`, input to output: n, hidden..., mirrored hidden, n."""
    return [n_features, *hidden, *reversed(hidden[:-1]), n_features]


def expected_shapes(n_features: int, hidden: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes of one member's ``state_dict`` arrays, in order: (out, in) weight, then (out,) bias."""
    shapes: list[tuple[int, ...]] = []
    for w_in, w_out in pairwise(autoencoder_widths(n_features, hidden)):
        shapes += [(w_out, w_in), (w_out,)]
    return shapes


def weights_mismatch(weights: Sequence[Any], n_features: int, hidden: Sequence[int], members: int) -> str | None:
    """Why ``weights`` are not the ``state_dict`` of that :class:`~iotad.core.model.Autoencoder`; None if they are."""
    want = expected_shapes(n_features, hidden) * members
    got = [tuple(np.shape(w)) for w in weights]
    if got == want:
        return None
    if len(want) != len(got):
        return f"expected {len(want)} arrays, got {len(got)}"
    i = next(i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
    return f"array {i}: expected shape {want[i]}, got {got[i]}"


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


def state_dict_names(hidden: Sequence[int], dropout: float, members: int) -> list[str]:
    """The ``state_dict`` keys of ``iotad.core.model.Autoencoder(n, hidden, dropout, members)``, without torch.

    Each member (``nets.<m>``) is an ``encoder`` and a ``decoder`` ``nn.Sequential``: a Linear + activation
    per layer, and with ``dropout > 0`` a parameter-free dropout module after every hidden layer except the
    bottleneck, which shifts the indices. A test checks this against the torch model.
    """
    def linears(prefix: str, n_layers: int, dropout_after: list[bool]) -> list[str]:
        names, index = [], 0
        for layer in range(n_layers):
            names += [f"{prefix}.{index}.weight", f"{prefix}.{index}.bias"]
            index += 3 if dropout > 0 and dropout_after[layer] else 2
        return names

    k = len(hidden)
    encoder = [i < k - 1 for i in range(k)]  # dropout after every encoder layer but the bottleneck
    decoder = [True] * (k - 1) + [False]  # after every decoder layer but the output
    return [name for m in range(members)
            for name in linears(f"nets.{m}.encoder", k, encoder) + linears(f"nets.{m}.decoder", k, decoder)]


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


def read_bundle(
    directory: str | Path,
    *,
    feature_names: Sequence[str] | None = None,
    n_features: int | None = None,
    retries: int = 5,
) -> Bundle:
    """Read and validate the bundle in ``directory``; ``feature_names`` / ``n_features`` (when given) must
    match the bundle's.

    The weights' sha256 is checked against ``bundle.json``; when the bundle changes while being read (a
    rewrite is under way) it is read again, up to ``retries`` times.

    Raises
    ------
    BundleError
        Missing or malformed bundle, or a feature mismatch (clear one-line message).
    """
    last: Exception | None = None
    for attempt in range(max(retries, 1)):
        try:
            return _read_once(Path(directory), feature_names, n_features)
        except BundleChanged as e:  # rewritten while we read it: read again
            last = e
            time.sleep(0.02 * (attempt + 1))
    raise BundleError(f"{directory}: bundle kept changing while being read ({last})")


def _read_once(d: Path, feature_names: Sequence[str] | None, n_features: int | None) -> Bundle:
    meta = _read_json(d)
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
    _check_features(d, n, names, feature_names, n_features)
    raw = _read_weights_file(d, wmeta)
    hidden, dropout, members = _model_shape(d, model_hp, n)
    arrays = _load_arrays(d, raw)
    try:
        scaler = Scaler.from_dict(meta["scaler"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{d}: malformed scaler ({e})") from e
    if scaler.n_features != n:
        raise BundleError(f"{d}: scaler has {scaler.n_features} features, model {n}")
    residual_scale = _residual_scale(d, meta.get("residual_scale"), n * members)
    problem = weights_mismatch(arrays, n, hidden, members)
    if problem:
        raise BundleError(f"{d}: weights do not fit the model: {problem}")
    thr = meta.get("threshold")
    return Bundle(
        directory=d,
        n_features=n,
        feature_names=None if names is None else [str(x) for x in names],
        hidden=hidden,
        dropout=dropout,
        members=members,
        arrays=arrays,
        scaler=scaler,
        residual_scale=residual_scale,
        threshold=None if thr is None else float(thr),
        quantile=float(meta.get("quantile", DEFAULT_QUANTILE)),
        round=int(meta.get("round", 0)),
        metadata=dict(meta.get("metadata") or {}),
    )


def _read_json(d: Path) -> Any:
    try:
        return json.loads((d / BUNDLE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        # A temporary sibling means a rewrite is under way (fallback swap): worth a retry.
        if any(d.parent.glob(f".{d.name}.tmp-*")):
            raise BundleChanged("bundle.json missing during a rewrite") from e
        raise BundleError(f"{d}: no model bundle ({BUNDLE_JSON} missing)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{d / BUNDLE_JSON}: not valid JSON ({e})") from e


def _check_features(
    d: Path, n: int, names: Sequence[str] | None, feature_names: Sequence[str] | None, n_features: int | None
) -> None:
    if names is not None and len(names) != n:
        raise BundleError(f"{d}: {len(names)} feature names for {n} features")
    if n_features is not None and n != n_features:
        raise BundleError(f"{d}: model expects {n} features, the data has {n_features}")
    if feature_names is None:
        return
    if len(feature_names) != n:
        raise BundleError(f"{d}: model expects {n} features, the data has {len(feature_names)}")
    if names is not None and list(names) != list(feature_names):
        diff = next(i for i, (a, b) in enumerate(zip(names, feature_names, strict=False)) if a != b)
        raise BundleError(
            f"{d}: feature {diff} is {names[diff]!r} in the model but {feature_names[diff]!r} in the data"
        )


def _read_weights_file(d: Path, wmeta: Any) -> bytes:
    if not isinstance(wmeta, dict):
        raise BundleError(f"{d}: malformed weights entry in {BUNDLE_JSON}")
    wpath = d / str(wmeta.get("file", WEIGHTS_NPZ))
    try:
        raw = wpath.read_bytes()
    except FileNotFoundError as e:
        raise BundleChanged(f"{wpath.name} missing") from e
    if hashlib.sha256(raw).hexdigest() != wmeta.get("sha256"):
        raise BundleChanged("weights do not match bundle.json")
    return raw


def _model_shape(d: Path, model_hp: Any, n: int) -> tuple[tuple[int, ...], float, int]:
    try:
        hidden = tuple(int(h) for h in model_hp["hidden"])  # every bundle records its architecture
        dropout = float(model_hp.get("dropout", 0.0))  # inference ignores dropout
        members = int(model_hp.get("members", 1))
        model_n = int(model_hp.get("n_features", n))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{d}: malformed model entry ({e})") from e
    if not hidden or any(h < 1 for h in hidden) or not 0.0 <= dropout < 1.0 or members < 1:
        raise BundleError(
            f"{d}: malformed model entry (hidden {list(hidden)}, dropout {dropout}, members {members})")
    if model_n != n:
        raise BundleError(f"{d}: model n_features {model_hp.get('n_features')} != bundle n_features {n}")
    return hidden, dropout, members


def _load_arrays(d: Path, raw: bytes) -> tuple[np.ndarray, ...]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return tuple(npz[f"w{i:03d}"] for i in range(len(npz.files)))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise BundleError(f"{d}: unreadable {WEIGHTS_NPZ} ({e})") from e


def _residual_scale(d: Path, rs: Any, n: int) -> ResidualScale | None:
    if rs is None:
        return None
    try:
        scale = ResidualScale.from_dict(rs)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{d}: malformed residual_scale ({e})") from e
    if scale.n_features != n:
        raise BundleError(f"{d}: residual scale has {scale.n_features} columns, the model's residual {n}")
    return scale
