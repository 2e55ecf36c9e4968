"""Split real Edge-IIoTset CSVs into per-device files, streaming raw lines.

Rows are copied byte for byte (never parsed into values or re-spelled), so the loader
sees exactly what the release contains. Devices get rows IID (``alpha=None``: a random
balanced assignment) or non-IID by ``Attack_type``: each traffic type draws device
proportions from Dirichlet(alpha) and its rows are assigned with those proportions.

Rows with the wrong number of fields are still written (assigned IID, since their
``Attack_type`` cannot be trusted) and counted in ``dataset.json``; the loader rejects
and counts them again per device. Blank lines are skipped.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, cast

import numpy as np

from iotad.data.loader import SchemaError, check_header, read_header
from iotad.data.schema import TRAFFIC_TYPES, TYPE_COLUMN

__all__ = ["MARKER", "partition_csvs"]

MARKER = "dataset.json"
CHUNK_ROWS = 100_000
_UNKNOWN = len(TRAFFIC_TYPES)  # class code for rows whose type cannot be read
_TYPE_CODES = {t.encode(): i for i, t in enumerate(TRAFFIC_TYPES)}

PathLike = str | os.PathLike[str]


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _records(f: IO[bytes]) -> Iterator[bytes]:
    """CSV records as raw bytes (a quoted field may span lines: quotes are balanced per record)."""
    pending = b""
    for line in f:
        record = pending + line if pending else line
        if record.count(b'"') % 2:
            pending = record
            continue
        pending = b""
        yield record
    if pending:
        yield pending


def _fields(record: bytes) -> list[bytes]:
    body = record.rstrip(b"\r\n")
    if b'"' not in body:
        return body.split(b",")
    row = next(csv.reader([body.decode("utf-8", errors="surrogateescape")]), [])
    return [x.encode("utf-8", errors="surrogateescape") for x in row]


def _chunks(f: IO[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for record in _records(f):
        if not record.strip():
            continue
        chunk.append(record if record.endswith(b"\n") else record + b"\n")
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _class_proportions(alpha: float, devices: int, seed: int) -> np.ndarray:
    """Dirichlet(alpha) device proportions per traffic type; seeded by the type's name."""
    props = np.empty((len(TRAFFIC_TYPES), devices))
    for i, name in enumerate(TRAFFIC_TYPES):
        props[i] = np.random.default_rng([seed, zlib.crc32(name.encode())]).dirichlet(np.full(devices, alpha))
    return props


def _source_kind(sources: list[Path]) -> str:
    """``synthetic`` when any input comes from an ``iotad synth`` folder (its results must stay
    labelled synthetic after re-partitioning), else ``edge-iiotset``."""
    for src in sources:
        for folder in (src.parent, src.parent.parent):
            try:
                if json.loads((folder / MARKER).read_text()).get("kind") == "synthetic":
                    return "synthetic"
            except (OSError, ValueError):
                continue
    return "edge-iiotset"


def partition_csvs(
    paths: PathLike | Iterable[PathLike],
    devices: int,
    out: Path,
    *,
    alpha: float | None = None,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> list[Path]:
    """Write ``out/device-<k>/traffic.csv`` (k < devices) and ``out/dataset.json``.

    Parameters
    ----------
    paths : path or iterable of paths
        Labelled Edge-IIoTset CSVs (``.csv`` or ``.csv.gz``), all with the same header.
    devices : int
        Number of devices (>= 1).
    out : Path
        Output directory.
    alpha : float, optional
        None for an IID split; otherwise the Dirichlet concentration over ``Attack_type``
        (smaller is more skewed).
    seed : int
        Seed of the assignment.
    chunk_rows : int
        Rows held in memory at a time.

    Returns
    -------
    list of Path
        The per-device CSVs, in device order.

    Raises
    ------
    SchemaError
        A file is missing or empty, its header is not the labelled Edge-IIoTset schema,
        or its columns are in a different order than the first file's.
    ValueError
        ``devices < 1`` or ``alpha <= 0``.
    """
    if devices < 1:
        raise ValueError("devices must be >= 1")
    if alpha is not None and not alpha > 0:
        raise ValueError("alpha must be > 0 (or None for IID)")
    sources = _as_paths(paths)
    if not sources:
        raise SchemaError("no input CSV given")
    header: list[str] | None = None
    for path in sources:
        names = read_header(path)
        check_header(path, names, labelled=True)
        if header is None:
            header = names
        elif names != header:
            raise SchemaError(f"{path}: columns are in a different order than in {sources[0]}")
    assert header is not None
    type_index, n_fields = header.index(TYPE_COLUMN), len(header)

    out = Path(out)
    targets = [out / f"device-{k}" / "traffic.csv" for k in range(devices)]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, devices, 0x9A27])
    props = _class_proportions(alpha, devices, seed) if alpha is not None else None
    counts = np.zeros((devices, len(TRAFFIC_TYPES) + 1), dtype=np.int64)
    wrong_width = 0
    iid_offset = 0

    handles = [t.open("wb") for t in targets]
    try:
        header_line = (",".join(header) + "\n").encode()
        for h in handles:
            h.write(header_line)
        for path in sources:
            with _open(path) as f:
                f.readline()  # the header, checked above
                for chunk in _chunks(f, chunk_rows):
                    codes = np.empty(len(chunk), dtype=np.int64)
                    for i, record in enumerate(chunk):
                        fields = _fields(record)
                        if len(fields) != n_fields:
                            codes[i] = _UNKNOWN
                            wrong_width += 1
                        else:
                            codes[i] = _TYPE_CODES.get(fields[type_index].strip(), _UNKNOWN)
                    # IID: a shuffled round-robin keeps device sizes balanced to within a row.
                    device = (iid_offset + np.arange(len(chunk))) % devices
                    rng.shuffle(device)
                    iid_offset += len(chunk)
                    if props is not None:
                        for c in np.unique(codes[codes != _UNKNOWN]):
                            rows = np.flatnonzero(codes == c)
                            device[rows] = rng.choice(devices, size=len(rows), p=props[c])
                    np.add.at(counts, (device, codes), 1)
                    for k in range(devices):
                        idx = np.flatnonzero(device == k)
                        if idx.size:
                            handles[k].write(b"".join(chunk[i] for i in idx))
    finally:
        for h in handles:
            h.close()

    names = [*TRAFFIC_TYPES, "<unreadable>"]
    marker = {
        "kind": _source_kind(sources),
        "sources": [p.name for p in sources],
        "devices": devices,
        "split": "iid" if alpha is None else "dirichlet",
        "alpha": alpha,
        "seed": seed,
        "rows_total": int(counts.sum()),
        "rows_per_device": [int(x) for x in counts.sum(axis=1)],
        "rows_wrong_column_count": wrong_width,
        "traffic_types_per_device": [
            {names[c]: int(v) for c, v in enumerate(row) if v} for row in counts
        ],
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return targets
