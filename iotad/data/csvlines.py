"""CSV lines from raw bytes: whole-line blocks, field counts in numpy, wrong-width lines cut, pandas for the rest."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import numpy.typing as npt
import pandas as pd


def line_blocks(f: IO[bytes], chunk_rows: int) -> Iterator[bytes]:
    """Blocks of at most ``chunk_rows`` whole lines, each ending with a newline."""
    read_size = max(1 << 16, chunk_rows * 256)
    pending = b""
    newlines = 0
    eof = False
    while True:
        while newlines < chunk_rows and not eof:
            data = f.read(read_size)
            if data:
                pending += data
                newlines += data.count(b"\n")
            else:
                eof = True
        if newlines >= chunk_rows:
            ends = np.flatnonzero(np.frombuffer(pending, dtype=np.uint8) == 10)
            cut = int(ends[chunk_rows - 1]) + 1
            read_size = max(1 << 16, cut)  # about one block per read from now on
            block, pending = pending[:cut], pending[cut:]
            newlines -= chunk_rows
            yield block
        else:
            if pending:
                yield pending if pending.endswith(b"\n") else pending + b"\n"
            return


def count_between(positions: npt.NDArray[np.intp], starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return np.searchsorted(positions, ends) - np.searchsorted(positions, starts)


@dataclass
class Lines:
    good: bytes  # the lines of the expected width, in order
    n_good: int
    good_rows: npt.NDArray[np.int64]  # their data-row numbers
    rows: int  # data rows in the block (blank lines are not rows)
    bad_width: int  # rows of the wrong width


def split_block(block: bytes, n_fields: int, first_row: int) -> Lines:
    """Check every line's field count on the raw bytes and keep the well-formed lines."""
    raw = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)  # each line ends with \n (guaranteed by line_blocks)
    starts = np.concatenate(([0], ends[:-1] + 1))
    content_end = ends - (raw[np.maximum(ends - 1, 0)] == 13) * (ends > starts)  # drop a \r
    blank = content_end <= starts
    fields = count_between(np.flatnonzero(raw == 44), starts, content_end) + 1
    if b'"' in block:
        quotes = count_between(np.flatnonzero(raw == 34), starts, content_end)
        # An odd count means a field spans lines or is malformed: the row is unusable.
        fields[quotes % 2 == 1] = -1
        for i in np.flatnonzero((quotes > 0) & (quotes % 2 == 0)):
            line = block[starts[i] : content_end[i]].decode("utf-8", errors="replace")
            fields[i] = len(next(csv.reader([line])))
    good = (fields == n_fields) & ~blank
    row_numbers = first_row + np.cumsum(~blank, dtype=np.int64) - 1
    rows = int((~blank).sum())
    n_good = int(good.sum())
    kept = block if n_good == len(ends) else raw[np.repeat(good, ends - starts + 1)].tobytes()
    return Lines(kept, n_good, row_numbers[good], rows, rows - n_good)


def parse_lines(lines: Lines, header: list[str], usecols: list[str]) -> pd.DataFrame:
    """Well-formed lines -> frame of raw strings, one row per line."""
    if lines.n_good == 0:
        return pd.DataFrame({c: pd.Series([], dtype=str) for c in usecols})
    frame = pd.read_csv(
        io.BytesIO(lines.good), engine="c", header=None, names=header, usecols=usecols, dtype=str,
        keep_default_na=False, na_filter=False, skip_blank_lines=False, encoding_errors="replace",
    )
    if len(frame) != lines.n_good:
        # Quoting the byte-level check did not foresee (e.g. a lone \r in quotes): parse
        # line by line so that rows stay aligned with their numbers.
        text = lines.good.decode("utf-8", errors="replace").split("\n")[: lines.n_good]
        records = [next(csv.reader([line.rstrip("\r")])) for line in text]
        frame = pd.DataFrame(records, columns=header, dtype=str)[usecols]
    return frame
