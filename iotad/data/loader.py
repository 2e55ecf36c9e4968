"""Stream Edge-IIoTset CSVs into encoded (unscaled) features, with bounded memory.

Files are read in blocks of whole lines. Each block's field counts are checked with
numpy on the raw bytes (commas per line; the csv module only for the rare lines with
quotes), lines of the wrong width are cut out, and the rest goes to pandas' C parser
with ``dtype=str``. This is exact for too-few and too-many fields alike, which padding
with spare column names cannot be: the C parser fills missing fields with "" and so
cannot tell ``a,b`` from ``a,b,``.

Rows are then encoded (:mod:`iotad.data.encoding`), bad rows counted per reason, and
duplicates removed across chunks through 64-bit row hashes.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np
import numpy.typing as npt

from iotad.data.csvlines import line_blocks, parse_lines, split_block
from iotad.data.encoding import (
    COLUMN_COUNT,
    DUPLICATE,
    SchemaError,
    encode_frame,
    row_hashes,
)
from iotad.data.rows import FirstSeen, RowBuffer
from iotad.data.schema import (
    CATEGORICAL_COLUMNS,
    FEATURE_NAMES,
    LABEL_COLUMN,
    LABEL_NOTES,
    N_FEATURES,
    NUMERIC_COLUMNS,
    RAW_COLUMNS,
    REJECT_REASONS,
    STREAM_COLUMNS,
    TYPE_COLUMN,
)
from iotad.data.traffic import ExtraFeatures, Traffic, _no_rejects, feature_width

__all__ = [
    "FEATURE_NAMES",
    "N_FEATURES",
    "REJECT_REASONS",
    "ExtraFeatures",
    "SchemaError",
    "Traffic",
    "encode_lines",
    "iter_traffic",
    "load_traffic",
    "read_header",
]

PathLike = str | os.PathLike[str]
Paths = PathLike | Iterable[PathLike]



def _as_paths(paths: Paths) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def read_header(path: PathLike) -> list[str]:
    """Column names of a CSV's first line (stripped; BOM removed).

    Raises
    ------
    SchemaError
        If the file is missing, unreadable or empty.
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"{p}: no such file")
    try:
        with _open(p) as f:
            first = f.readline(1 << 20)
    except OSError as exc:
        raise SchemaError(f"{p}: cannot read: {exc}") from exc
    text = first.decode("utf-8-sig", errors="replace").strip("\r\n")
    if not text.strip():
        raise SchemaError(f"{p}: empty file, expected a header line")
    return [name.strip() for name in next(csv.reader([text]))]


def _names(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_header(path: PathLike, header: Sequence[str], *, labelled: bool) -> None:
    """Raise ``SchemaError`` unless ``header`` is the Edge-IIoTset schema (any order).

    Unlabelled reads also accept the schema without the two label columns.
    """
    expected = set(RAW_COLUMNS)
    if not labelled:
        expected -= {LABEL_COLUMN, TYPE_COLUMN}
    present = set(header)
    dupes = sorted({n for n in header if header.count(n) > 1})
    missing = [c for c in RAW_COLUMNS if c in expected and c not in present]
    unknown = [c for c in header if c not in RAW_COLUMNS]
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unknown:
        problems.append(f"unknown {_names(unknown)}")
    if dupes:
        problems.append(f"repeated {_names(dupes)}")
    if problems:
        what = "labelled " if labelled else ""
        raise SchemaError(
            f"{path}: header is not the {what}Edge-IIoTset schema: {'; '.join(problems)}"
        )


@dataclass
class _Chunk:
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int8]
    type_codes: npt.NDArray[np.int8]
    attack_types: npt.NDArray[np.object_]
    row_index: npt.NDArray[np.int64]
    rejected: dict[str, int]
    rows_read: int
    notes: npt.NDArray[np.int8]  # per kept row, 0 or a 1-based index into LABEL_NOTES


def _iter_chunks(paths: Paths, chunk_rows: int, labelled: bool,
                 extra: ExtraFeatures | None = None) -> Iterator[_Chunk]:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    files = _as_paths(paths)
    headers = []
    for path in files:  # all headers first: a bad last file fails before any work
        header = read_header(path)
        check_header(path, header, labelled=labelled)
        headers.append(header)
    next_row = 0
    for path, header in zip(files, headers, strict=True):
        if extra is not None:
            extra.start_stream()  # each file is its own capture: no state across files
        with _open(path) as f:
            f.readline(1 << 20)
            for block in line_blocks(f, chunk_rows):
                chunk = _encode_block(block, header, next_row, labelled, extra)
                next_row += chunk.rows_read
                yield chunk


def _encode_block(block: bytes, header: list[str], first_row: int, labelled: bool,
                  extra: ExtraFeatures | None = None) -> _Chunk:
    lines = split_block(block, len(header), first_row)
    usecols = [*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, *((LABEL_COLUMN, TYPE_COLUMN) if labelled else ()),
               *(STREAM_COLUMNS if extra is not None else ())]
    frame = parse_lines(lines, header, usecols)
    encoded = encode_frame(frame, labelled=labelled)
    rejected = _no_rejects()
    rejected["column_count"] = lines.bad_width
    counts = np.bincount(encoded.reason, minlength=len(REJECT_REASONS) + 1)
    for code, reason in enumerate(REJECT_REASONS, start=1):
        if code != COLUMN_COUNT:
            rejected[reason] += int(counts[code])
    keep = encoded.reason == 0
    features = encoded.features[keep] if not keep.all() else encoded.features
    if extra is not None:
        keys = {c: frame[c].to_numpy(dtype=object)[keep] for c in STREAM_COLUMNS}
        features = np.concatenate([features, extra(keys, features)], axis=1)
    return _Chunk(
        features=features,
        labels=encoded.labels[keep],
        type_codes=encoded.type_codes[keep],
        attack_types=encoded.attack_types[keep],
        row_index=lines.good_rows[keep],
        rejected=rejected,
        rows_read=lines.rows,
        notes=encoded.note[keep],
    )


def encode_lines(block: bytes, header: list[str], *, labelled: bool = True, first_row: int = 0,
                 extra: ExtraFeatures | None = None) -> Traffic:
    """Encode raw CSV lines (no header line) exactly as the loader encodes a file chunk, rejects
    counted per reason, no deduplication: what a live scorer reading appended lines needs (its
    ``extra`` stage carries on across calls: one stream)."""
    return _to_traffic(_encode_block(block, header, first_row, labelled, extra))


def _to_traffic(chunk: _Chunk) -> Traffic:
    return Traffic(
        features=chunk.features,
        labels=chunk.labels,
        attack_types=chunk.attack_types,
        row_index=chunk.row_index,
        rejected=chunk.rejected,
        rows_read=chunk.rows_read,
        label_notes=_count_notes(chunk.notes),
    )


def _count_notes(notes: npt.NDArray[np.int8]) -> dict[str, int]:
    counts = np.bincount(notes, minlength=len(LABEL_NOTES) + 1)
    return {note: int(counts[code]) for code, note in enumerate(LABEL_NOTES, start=1)}


def iter_traffic(paths: Paths, *, chunk_rows: int = 100_000, labelled: bool = True,
                 extra: ExtraFeatures | None = None) -> Iterator[Traffic]:
    """Encoded rows of one or more CSVs, chunk by chunk (no deduplication).

    Parameters
    ----------
    paths
        A CSV path (``.csv`` or ``.csv.gz``) or several, read in order.
    chunk_rows
        Lines per chunk; bounds memory.
    labelled
        Read ``Attack_label``/``Attack_type``; ``False`` for live traffic, which may lack them
        (labels -1, attack types "").
    extra
        A stage whose columns follow the packet features (:class:`ExtraFeatures`).

    Raises
    ------
    SchemaError
        A file is missing or its header is not the Edge-IIoTset schema.
    """
    for chunk in _iter_chunks(paths, chunk_rows, labelled, extra):
        yield _to_traffic(chunk)


def load_traffic(
    paths: Paths, *, dedupe: bool = True, chunk_rows: int = 100_000, labelled: bool = True,
    extra: ExtraFeatures | None = None,
) -> Traffic:
    """Read, encode and (by default) deduplicate one or more CSVs into one ``Traffic``.

    Duplicates are rows whose packet encodings (features, label, type) are byte-identical, so
    empty-value spellings and dropped identifier columns do not make rows distinct; the
    first occurrence is kept. An ``extra`` stage sees every valid row, duplicates included
    (they are traffic), and its columns do not make rows distinct. See ``iter_traffic`` for
    the parameters.
    """
    features = RowBuffer(feature_width(extra))
    labels, types, index, notes = [], [], [], []
    rejected = _no_rejects()
    rows_read = 0
    seen = FirstSeen()
    for chunk in _iter_chunks(paths, chunk_rows, labelled, extra):
        rows_read += chunk.rows_read
        for reason, count in chunk.rejected.items():
            rejected[reason] += count
        if dedupe and len(chunk.labels):
            packet = chunk.features[:, :N_FEATURES]
            keep = seen.first_seen(row_hashes(packet, chunk.labels, chunk.type_codes))
            rejected[REJECT_REASONS[DUPLICATE - 1]] += int((~keep).sum())
            chunk.features, chunk.labels = chunk.features[keep], chunk.labels[keep]
            chunk.attack_types, chunk.row_index = chunk.attack_types[keep], chunk.row_index[keep]
            chunk.notes = chunk.notes[keep]
        features.append(chunk.features)
        labels.append(chunk.labels)
        types.append(chunk.attack_types)
        index.append(chunk.row_index)
        notes.append(chunk.notes)
        del chunk
    if not labels:
        return Traffic.empty(feature_width(extra))
    return Traffic(
        features=features.result(),
        labels=np.concatenate(labels),
        attack_types=np.concatenate(types),
        row_index=np.concatenate(index),
        rejected=rejected,
        rows_read=rows_read,
        label_notes=_count_notes(np.concatenate(notes)),
    )
