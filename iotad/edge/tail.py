"""The tail source: follow a CSV another process appends to (rotation and truncation included)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from iotad.data.encoding import SchemaError
from iotad.data.loader import check_header
from iotad.edge.sources import RawBlock, data_lines, parse_header

log = logging.getLogger(__name__)

# Stands for a line longer than TailSource.MAX_LINE: one field, so the encoder rejects it as column_count.
OVERLONG_ROW = b"overlong line\n"


class TailSource:
    """Follows a CSV that another process appends to, like ``tail -F``.

    The first line of the file is its header. Starts at the end of the file (``from_start=False``) or
    at its first data row. Survives rotation (the path names a new file: the old one is drained first)
    and truncation (the file shrank: read again from its header). A partial last line stays buffered
    until its newline arrives (a line longer than ``MAX_LINE`` is dropped and counted as one bad row,
    so memory stays bounded); lines equal to the header (concatenated CSVs) are skipped.
    """

    CHUNK = 1 << 16
    MAX_LINE = 1 << 20  # Edge-IIoTset rows are about 1 kB

    def __init__(self, path: Path | str, *, from_start: bool = False) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self._fh: IO[bytes] | None = None
        self._ino: int | None = None
        self._opened_once = False
        self._new_stream = False
        self.header: list[str] = []
        self._header_line = b""
        self._buf = b""
        self._overlong = False  # dropping the rest of a line longer than MAX_LINE
        self._lines: list[bytes] = []
        self.rotations = 0
        self.truncations = 0
        self.bad_headers = 0
        self._bad_header_sig: tuple[int, int] | None = None

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (kept open across calls)
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        if not self._read_header(fh, (st.st_ino, st.st_size)):
            fh.close()
            return False
        if not self._opened_once and not self.from_start:
            fh.seek(0, os.SEEK_END)
        self._fh, self._ino, self._opened_once = fh, st.st_ino, True
        self._buf, self._overlong = b"", False
        self._new_stream = True  # a new (or replaced) file is a new capture for the window statistics
        return True

    def _read_header(self, fh: IO[bytes], sig: tuple[int, int]) -> bool:
        fh.seek(0)
        line = fh.readline(1 << 20)
        if not line.endswith(b"\n"):
            return False  # empty, or the header is still being written
        header = parse_header(line)
        try:
            check_header(self.path, header, labelled=False)
        except SchemaError as exc:
            if sig != self._bad_header_sig:
                self.bad_headers += 1
                self._bad_header_sig = sig
                log.error("%s: not scoring this file: %s", self.path, exc)
            return False
        self.header, self._header_line = header, line.rstrip(b"\r\n")
        return True

    def _switch_if_replaced(self) -> bool:
        """Called when the open file has no more data: follow a rotation or a truncation.

        Returns True when there is a (new or rewound) file to read on from."""
        assert self._fh is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # rotated away, successor not there yet: keep waiting
        if st.st_ino != self._ino:
            self._flush_partial()
            self._fh.close()
            self._fh = None
            self.rotations += 1
            return self._open()
        if st.st_size < self._fh.tell():
            self._buf, self._overlong = b"", False  # a partial line of the old content is gone with it
            self.truncations += 1
            if not self._read_header(self._fh, (st.st_ino, st.st_size)):
                self._fh.close()
                self._fh = None
                return False
            return True
        return False

    def _flush_partial(self) -> None:
        # The old file will not grow any more: its unterminated last line is a (probably cut) row.
        if self._overlong:
            self._lines.append(OVERLONG_ROW)
        elif self._buf.strip(b"\r\n"):
            self._lines.append(self._buf + b"\n")
        self._buf, self._overlong = b"", False

    def _fill(self, want: int) -> None:
        while len(self._lines) < want and self._fh is not None:
            data = self._fh.read(self.CHUNK)
            if not data:
                if not self._switch_if_replaced():
                    return
                continue
            self._buf += data
            cut = self._buf.rfind(b"\n")
            if cut < 0:
                if len(self._buf) > self.MAX_LINE:  # a line that never ends must not grow memory
                    self._buf, self._overlong = b"", True
                continue
            complete, self._buf = self._buf[: cut + 1], self._buf[cut + 1 :]
            if self._overlong:  # its end: the whole line becomes one row of the wrong width (counted)
                complete, self._overlong = OVERLONG_ROW + complete[complete.find(b"\n") + 1 :], False
            for ln in data_lines(complete):
                if ln.rstrip(b"\r\n") != self._header_line:
                    self._lines.append(ln)

    def read(self, max_rows: int) -> RawBlock | None:
        if self._fh is None and not self._open():
            return None
        if self._fh is not None:
            self._fill(max_rows)
        if not self._lines:
            return None
        take, self._lines = self._lines[:max_rows], self._lines[max_rows:]
        new_stream, self._new_stream = self._new_stream, False
        return RawBlock(b"".join(take), list(self.header), new_stream=new_stream)

    def backlog_bytes(self) -> int:
        """Bytes appended to the file that the agent has not scored yet: the capture file is the queue, so
        a burst waits on disk and memory stays bounded (a block plus one chunk)."""
        pending = len(self._buf) + sum(map(len, self._lines))
        if self._fh is None:
            return pending
        try:
            return max(0, os.fstat(self._fh.fileno()).st_size - self._fh.tell()) + pending
        except OSError:
            return pending

    def take_shed_rows(self) -> int:
        return 0  # a tail drops nothing: what it cannot score yet waits in the file

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
