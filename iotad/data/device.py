"""One device's traffic, loaded once and cached as arrays.

Under the deployment engine every ClientApp message runs in a fresh process, so
re-parsing the CSV each time would dominate a round. The encoded splits are cached
as a plain ``.npz`` (no pickle) keyed by the file's identity, the split seed and the
feature layout; a changed file or encoder invalidates the cache by itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from iotad.data.schema import FEATURE_NAMES, LABEL_NOTES, REJECT_REASONS
from iotad.data.splits import Splits, split_traffic
from iotad.data.traffic import ExtraFeatures, Traffic

_PARTS = ("train", "calibration", "evaluation")
log = logging.getLogger(__name__)
_LAYOUT = 2  # of the cache file: a new layout never reads an old file


def traffic_file(path: Path) -> Path:
    """A device's CSV: the path itself, or ``traffic.csv`` inside a device folder."""
    return path / "traffic.csv" if path.is_dir() else path


def _cache_key(csv: Path, seed: int, extra: ExtraFeatures | None) -> str:
    st = csv.stat()
    names = (*FEATURE_NAMES, *(extra.names if extra is not None else ()))
    ident = f"{_LAYOUT}|{csv.resolve()}|{st.st_size}|{st.st_mtime_ns}|{seed}|{'|'.join(names)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _save(cache: Path, splits: Splits) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name in _PARTS:
        part: Traffic = getattr(splits, name)
        arrays[f"{name}.features"] = part.features
        arrays[f"{name}.labels"] = part.labels
        arrays[f"{name}.attack_types"] = part.attack_types.astype("U32")
        arrays[f"{name}.row_index"] = part.row_index
    # What the read rejected and noted (every part carries the whole read's counts, see Traffic.take).
    read = splits.train
    arrays["read.rejected"] = np.array([read.rejected.get(r, 0) for r in REJECT_REASONS], dtype=np.int64)
    arrays["read.label_notes"] = np.array([read.label_notes.get(n, 0) for n in LABEL_NOTES], dtype=np.int64)
    arrays["read.rows"] = np.array(read.rows_read, dtype=np.int64)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, cache)  # atomic: concurrent ClientApp processes never see half a file
    except OSError as e:  # a full or read-only disk: the cache only saves time, the splits are in memory
        log.warning("splits cache not written (%s): %s; the traffic is parsed again next time", cache, e)
        tmp.unlink(missing_ok=True)


def _load(cache: Path) -> Splits:
    with np.load(cache, allow_pickle=False) as z:
        rejected = dict(zip(REJECT_REASONS, z["read.rejected"].tolist(), strict=True))
        notes = dict(zip(LABEL_NOTES, z["read.label_notes"].tolist(), strict=True))
        rows_read = int(z["read.rows"])
        parts = [
            Traffic(
                features=z[f"{name}.features"],
                labels=z[f"{name}.labels"],
                attack_types=z[f"{name}.attack_types"].astype(object),
                row_index=z[f"{name}.row_index"],
                rejected=dict(rejected),
                rows_read=rows_read,
                label_notes=dict(notes),
            )
            for name in _PARTS
        ]
    return Splits(*parts)


def load_device_splits(
    path: Path, seed: int, cache_dir: Path | None = None, extra: ExtraFeatures | None = None
) -> Splits:
    """Encoded train / calibration / evaluation splits of one device's traffic (with ``extra``'s columns,
    computed over the whole file in capture order before the rows are split)."""
    csv = traffic_file(Path(path))
    if cache_dir is not None and csv.exists():
        cache = Path(cache_dir) / f"splits-{_cache_key(csv, seed, extra)}.npz"
        if cache.exists():
            return _load(cache)
    from iotad.data.loader import load_traffic  # pandas only on a cache miss

    splits = split_traffic(load_traffic([csv], extra=extra), seed)
    if cache_dir is not None:
        _save(cache, splits)
    return splits
