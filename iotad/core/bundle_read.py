"""Reading a model bundle back: checks the format, features, weights' sha256 and shapes; retries while it is swapped."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core import bundle as fmt
from iotad.core.bundle import Bundle, BundleChanged, BundleError
from iotad.core.normalisation import scaler_from_dict
from iotad.core.preprocessing import ResidualScale
from iotad.core.shapes import weights_mismatch


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
    if not isinstance(meta, dict) or meta.get("format") != fmt.BUNDLE_FORMAT:
        raise BundleError(f"{d}: not an iotad model bundle")
    if int(meta.get("version", -1)) != fmt.BUNDLE_VERSION:
        raise BundleError(f"{d}: bundle version {meta.get('version')}, this iotad reads {fmt.BUNDLE_VERSION}")
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
        scaler = None if meta["scaler"] is None else scaler_from_dict(meta["scaler"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{d}: malformed scaler ({e})") from e
    if scaler is not None and scaler.n_features != n:
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
        quantile=float(meta.get("quantile", fmt.DEFAULT_QUANTILE)),
        round=int(meta.get("round", 0)),
        metadata=dict(meta.get("metadata") or {}),
    )


def _read_json(d: Path) -> Any:
    try:
        return json.loads((d / fmt.BUNDLE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        # A temporary sibling means a rewrite is under way (fallback swap): worth a retry.
        if any(d.parent.glob(f".{d.name}.tmp-*")):
            raise BundleChanged("bundle.json missing during a rewrite") from e
        raise BundleError(f"{d}: no model bundle ({fmt.BUNDLE_JSON} missing)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{d / fmt.BUNDLE_JSON}: not valid JSON ({e})") from e


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
        raise BundleError(f"{d}: malformed weights entry in {fmt.BUNDLE_JSON}")
    wpath = d / str(wmeta.get("file", fmt.WEIGHTS_NPZ))
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
        raise BundleError(f"{d}: unreadable {fmt.WEIGHTS_NPZ} ({e})") from e


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
