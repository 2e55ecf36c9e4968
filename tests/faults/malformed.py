"""Malformed traffic files, built from a valid Edge-IIoTset CSV: what each fault does to the bytes and
how many rows must survive it.

Every kind keeps some valid rows (except the ones that cannot: empty, header only, wrong header), so a
test can check that a fault costs exactly the rows it broke and no valid row besides.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from iotad.data.schema import RAW_COLUMNS

BOM = b"\xef\xbb\xbf"
LONG_LINE_BYTES = 10 * 1024 * 1024
KINDS = (
    "empty file", "header only", "truncated rows", "extra columns", "binary garbage lines", "UTF-8 BOM",
    "CRLF and LF mixed", "NaN, Inf and 1e400 values", "wrong header", "unknown Attack_type spelling",
    "Attack_label disagrees with Attack_type", "10 MB single line", "blank lines, no final newline",
)


@dataclass(frozen=True)
class Malformed:
    """A broken CSV and what reading it must give.

    ``valid`` rows must be scored; ``broken`` rows must be rejected (counted, by ``reason`` when one reason is
    certain); ``schema_error``: the file is not this schema at all, nothing is read and the exit is non-zero.
    """

    name: str
    data: bytes
    valid: int
    broken: int = 0
    reason: str | None = None
    notes: dict[str, int] = field(default_factory=dict)
    schema_error: bool = False


def _field(row: bytes, column: str, value: bytes) -> bytes:
    assert b'"' not in row, "synthetic rows have no quoted fields"
    parts = row.rstrip(b"\r\n").split(b",")
    parts[RAW_COLUMNS.index(column)] = value
    return b",".join(parts) + b"\n"


def _every(rows: list[bytes], step: int, change: Callable[[bytes], bytes]) -> tuple[list[bytes], int]:
    out = [change(r) if i % step == step - 1 else r for i, r in enumerate(rows)]
    return out, sum(1 for i in range(len(rows)) if i % step == step - 1)


def _garbage_line(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice([b for b in range(256) if b not in (10, 13, 44)]) for _ in range(n)) + b"\n"


def malformed_kinds(header: bytes, rows: list[bytes], types: tuple[str, str]) -> list[Malformed]:
    """Every kind of broken file, from ``header`` (no newline) and valid ``rows`` (each ending in a newline).

    ``types``: (an attack type present in ``rows``, a name for it that no mapping knows).
    """
    h = header + b"\n"
    n = len(rows)
    rng = random.Random(5)
    truncated, n_trunc = _every(rows, 7, lambda r: r[: len(r) // 2] + b"\n")
    extra, n_extra = _every(rows, 9, lambda r: r.rstrip(b"\n") + b",surplus\n")
    garbage = [*rows]
    for i in range(5):
        garbage.insert(1 + i * (n // 5), _garbage_line(rng, 300))
    crlf = [r.rstrip(b"\n") + b"\r\n" if i % 2 else r for i, r in enumerate(rows)]
    nonfinite = [*rows]
    # "nan" is one of the dataset's spellings of an empty field (read as 0), not a bad value.
    for i, value in enumerate((b"inf", b"-inf", b"1e400", b"1e39")):  # 1e39: beyond float32
        nonfinite[3 + 11 * i] = _field(rows[3 + 11 * i], "tcp.len", value)
    known, respelled = types
    renamed = [r.replace(b"," + known.encode() + b"\n", b"," + respelled.encode() + b"\n") for r in rows]
    n_renamed = sum(1 for a, b in zip(rows, renamed, strict=True) if a != b)
    label = RAW_COLUMNS.index("Attack_label")
    disagree = [_field(r, "Attack_label", b"0") if r.rstrip(b"\n").split(b",")[label] == b"1" and i % 4 == 0 else r
                for i, r in enumerate(rows)]
    n_disagree = sum(1 for a, b in zip(rows, disagree, strict=True) if a != b)
    long_line = [*rows[: n // 2], b"7" * LONG_LINE_BYTES + b"\n", *rows[n // 2 :]]
    wrong = b",".join(f"col{i}".encode() for i in range(len(header.split(b","))))
    return [
        Malformed("empty file", b"", 0, schema_error=True),
        Malformed("header only", h, 0),
        Malformed("truncated rows", h + b"".join(truncated), n - n_trunc, n_trunc, "column_count"),
        Malformed("extra columns", h + b"".join(extra), n - n_extra, n_extra, "column_count"),
        Malformed("binary garbage lines", h + b"".join(garbage), n, 5),
        Malformed("UTF-8 BOM", BOM + h + b"".join(rows), n),
        Malformed("CRLF and LF mixed", h + b"".join(crlf), n),
        Malformed("NaN, Inf and 1e400 values", h + b"".join(nonfinite), n - 4, 4, "non_finite"),
        Malformed("wrong header", wrong + b"\n" + b"".join(rows), 0, schema_error=True),
        Malformed("unknown Attack_type spelling", h + b"".join(renamed), n, notes={"unknown_type": n_renamed}),
        Malformed("Attack_label disagrees with Attack_type", h + b"".join(disagree), n,
                  notes={"label_type_mismatch": n_disagree}),
        Malformed("10 MB single line", h + b"".join(long_line), n, 1, "column_count"),
        Malformed("blank lines, no final newline", h + b"\n".join(r.rstrip(b"\n") for r in rows).replace(
            b"\n", b"\n\n", 3), n),
    ]
