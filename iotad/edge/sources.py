"""Where the agent reads traffic: raw CSV blocks, and the replay source (a labelled CSV at a rate, with bursts)."""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from iotad.data.loader import check_header
from iotad.data.schema import (
    LABEL_COLUMN,
    TYPE_COLUMN,
)

log = logging.getLogger(__name__)


@dataclass
class RawBlock:
    """Complete CSV lines (each ends with ``\\n``) of one file whose header is ``header``.

    ``new_stream``: the lines start a new capture (a replay that starts over, a replaced file), so
    window statistics must not carry over from the previous lines.
    """

    data: bytes
    header: list[str]
    new_stream: bool = False

    @property
    def labelled(self) -> bool:
        return LABEL_COLUMN in self.header and TYPE_COLUMN in self.header


class Source(Protocol):
    def read(self, max_rows: int) -> RawBlock | None: ...

    def backlog_bytes(self) -> int:
        """Bytes of traffic waiting to be read (the agent is that far behind)."""
        ...

    def take_shed_rows(self) -> int:
        """Rows dropped unread since the last call (load shed)."""
        ...

    def close(self) -> None: ...


def parse_header(line: bytes) -> list[str]:
    text = line.decode("utf-8-sig", errors="replace").strip("\r\n")
    return [name.strip() for name in next(csv.reader([text]))] if text.strip() else []


def data_lines(raw: bytes) -> list[bytes]:
    """Non-blank lines, each ending with ``\\n`` (the loader's notion of a data row)."""
    return [ln if ln.endswith(b"\n") else ln + b"\n" for ln in raw.splitlines(keepends=True) if ln.strip(b"\r\n")]


class ReplaySource:
    """Replays a labelled traffic CSV at ``rate`` rows/s (0: as fast as scoring goes), looping.

    Parameters
    ----------
    only_attacks
        Replay only the rows labelled as attacks.
    only_normal
        Replay every row except those labelled as attacks: a quiet baseline (anomalies at the false-positive
        rate) that bursts then stand out from, as in a real network.
    burst_rows, burst_every
        Every ``burst_every`` s (0: never) and on :meth:`trigger_burst`, send ``burst_rows`` attack rows
        at once on top of the paced stream.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        rate: float = 100.0,
        only_attacks: bool = False,
        only_normal: bool = False,
        burst_rows: int = 0,
        burst_every: float = 0.0,
        loop: bool = True,
        min_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        raw = self.path.read_bytes()
        first, _, rest = raw.partition(b"\n")
        self.header = parse_header(first)
        check_header(self.path, self.header, labelled=LABEL_COLUMN in self.header)
        self.lines = data_lines(rest)
        self.rate = float(rate)
        self.loop = loop
        self.min_interval = min_interval
        self.clock = clock
        self.burst_rows = int(burst_rows)
        self.burst_every = float(burst_every)
        if only_attacks and only_normal:
            raise ValueError("only_attacks and only_normal exclude each other")
        need_attacks = only_attacks or only_normal or burst_rows > 0
        # Without bursts configured, attack rows are found on the first SIGUSR1 burst (lazily: a long
        # replay file is not parsed twice at start for a burst that may never come).
        self._attack_cache: np.ndarray | None = self._attack_rows() if need_attacks else None
        if need_attacks and len(self.attack_rows) == 0:
            raise ValueError(f"{self.path}: no attack rows to replay")
        self.order = np.arange(len(self.lines))
        if only_attacks:
            self.order = self.attack_rows
        elif only_normal:  # malformed rows stay in: they are counted and skipped like live ones
            self.order = np.setdiff1d(self.order, self.attack_rows, assume_unique=True)
        self._pos = 0
        self._restarted = True  # the first block starts the stream
        self._burst_pos = 0
        self._pending_burst = 0
        self._shed = 0
        self._lock = threading.Lock()
        self.reset_clock()

    @property
    def attack_rows(self) -> np.ndarray:
        """Data-row numbers of the attack rows (bursts, ``only_attacks``), found on first use."""
        if self._attack_cache is None:
            self._attack_cache = self._attack_rows()
            if len(self._attack_cache) == 0:
                log.warning("%s: no attack rows, bursts are ignored", self.path)
        return self._attack_cache

    def _attack_rows(self) -> np.ndarray:
        """Data-row numbers of valid attack rows, through the loader (the one parser)."""
        from iotad.data.loader import iter_traffic

        idx = [t.row_index[t.labels == 1] for t in iter_traffic(self.path, labelled=True)]
        return np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)

    def reset_clock(self) -> None:
        """Restart pacing now (no backlog of rows 'owed' from before)."""
        self._t0 = self.clock()
        self._emitted = 0
        self._last_burst = self._t0

    def trigger_burst(self, rows: int | None = None) -> None:
        """Queue a burst of attack rows (signal-safe: only bumps a counter)."""
        self._pending_burst += int(rows if rows is not None else self.burst_rows or 500)

    def _take(self, order: np.ndarray, pos: int, n: int) -> tuple[list[int], int]:
        out: list[int] = []
        while len(out) < n and len(order):
            if pos >= len(order):
                if not self.loop:
                    break
                if order is self.order:
                    if out:  # a new pass starts a new stream: in the next block
                        break
                    self._restarted = True
                pos = 0
            k = min(n - len(out), len(order) - pos)
            out.extend(order[pos : pos + k].tolist())
            pos += k
        return out, pos

    @property
    def exhausted(self) -> bool:
        return not self.loop and self._pos >= len(self.order) and self._pending_burst == 0

    def read(self, max_rows: int) -> RawBlock | None:
        now = self.clock()
        if self.burst_every > 0 and now - self._last_burst >= self.burst_every:
            self._last_burst = now
            self.trigger_burst()
        with self._lock:
            if self._pending_burst > 0:
                if not len(self.attack_rows):
                    self._pending_burst = 0
                n = min(max_rows, self._pending_burst)
                rows, self._burst_pos = self._take(self.attack_rows, self._burst_pos, n)
                self._pending_burst -= len(rows)
                if rows:
                    return RawBlock(b"".join(self.lines[i] for i in rows), self.header)
            if self.rate > 0:
                owed = int(self.rate * (now - self._t0)) - self._emitted
                if owed > 20 * max_rows:  # we fell far behind (slow box): drop the backlog, keep the pace
                    self._shed += owed
                    self.reset_clock()
                    owed = 0
                n = min(max_rows, owed)
                if n < min(max_rows, max(1, int(self.rate * self.min_interval))):
                    return None
            else:
                n = max_rows
            rows, self._pos = self._take(self.order, self._pos, n)
            restarted, self._restarted = self._restarted, False
            self._emitted += len(rows)
        if not rows:
            return None
        return RawBlock(b"".join(self.lines[i] for i in rows), self.header, new_stream=restarted)

    def backlog_bytes(self) -> int:
        return 0  # a replay never queues: it sheds what it owes (take_shed_rows)

    def take_shed_rows(self) -> int:
        shed, self._shed = self._shed, 0
        return shed

    def close(self) -> None:
        pass
