"""One traffic stream's window state: bounded key tables, the stream clock, counters.

A stream is one capture or input file; concatenated captures are separate streams
(:meth:`WindowState.reset`), so the gap between them never shows up as traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotad.features.keys import Key, parse_clock, stream_keys
from iotad.features.names import DECAYS, INDICATORS, MIRROR_OF, N_WINDOW_FEATURES, STATS, TABLES
from iotad.features.window import update_windows

DEFAULT_CAPACITY = 16_384  # tracked keys per table
_HALF_DAY = 43_200.0


@dataclass
class WindowCounters:
    """What the stage had to correct or drop since the state was made (over all its streams)."""

    rows: int = 0
    clamped: int = 0  # timestamps before the previous one, held at it
    bad_time: int = 0  # unreadable timestamps, held at the previous one
    evicted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


class _Table:
    """Key -> slot, at most ``capacity`` keys; when full the stalest keys are dropped."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slot_of: dict[Key, int] = {}
        self.key_of: list[Key | None] = [None] * capacity
        self.free = list(range(capacity - 1, -1, -1))

    def assign(self, keys: Sequence[Key | None], last: npt.NDArray[np.float64],
               sums: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], int]:
        """Slots of ``keys`` (-1 for None) and how many keys were evicted to make room."""
        get = self.slot_of.get
        out = np.array([get(key, -1) for key in keys], dtype=np.int64)  # the common case: known keys
        evicted = 0
        for i in np.flatnonzero(out < 0).tolist():
            key = keys[i]
            if key is None:
                continue
            s = get(key)
            if s is None:  # new key (a repeat within this block finds the slot just made)
                if not self.free:
                    evicted += self._evict(last, sums, set(out[out >= 0].tolist()))
                s = self.free.pop()
                self.slot_of[key] = s
                self.key_of[s] = key
                last[s] = -np.inf
            out[i] = s
        return out, evicted

    def find(self, keys: Sequence[Key | None]) -> npt.NDArray[np.int64]:
        """Slots of ``keys`` already tracked, -1 for the others (nothing is added)."""
        get = self.slot_of.get
        return np.array([-1 if key is None else get(key, -1) for key in keys], dtype=np.int64)

    def _evict(self, last: npt.NDArray[np.float64], sums: npt.NDArray[np.float64], in_use: set[int]) -> int:
        # Drop the stalest eighth at once (amortised), never a key this block already uses.
        order = np.argsort(last, kind="stable")
        want = max(self.capacity // 8, 1)
        victims = [int(s) for s in order if int(s) not in in_use][:want]
        for s in victims:
            del self.slot_of[self.key_of[s]]
            self.key_of[s] = None
            last[s] = -np.inf
            sums[s] = 0.0
            self.free.append(s)
        return len(victims)

    def __len__(self) -> int:
        return len(self.slot_of)


class WindowState:
    """Window statistics of one stream, fed block by block in capture order.

    Parameters
    ----------
    capacity
        Keys tracked per table. State is ``4 * capacity * 40`` float64 values (21 MiB at the
        default, see ``nbytes``); a flood of spoofed sources evicts the stalest keys instead of growing.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self._n_stats = len(STATS)
        self.counters = WindowCounters()  # cumulative over streams (metrics count them)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next row starts a new stream."""
        n_tables = len(TABLES)
        self.tables = [_Table(self.capacity) for _ in TABLES]
        self.last = np.full((n_tables, self.capacity), -np.inf)
        self.sums = np.zeros((n_tables, self.capacity, len(DECAYS), self._n_stats))
        self.clock: float | None = None
        self.day = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.last.nbytes + self.sums.nbytes)

    def tracked(self) -> dict[str, int]:
        return {name: len(table) for name, table in zip(TABLES, self.tables, strict=True)}

    def _times(self, raw: np.ndarray | Sequence[object]) -> npt.NDArray[np.float64]:
        # Capture time of day -> a non-decreasing stream clock: midnight rolls over, a step back is held.
        parsed = parse_clock(raw)
        out = np.empty(len(parsed))
        clock, day = self.clock, self.day
        c = self.counters
        for i, v in enumerate(parsed.tolist()):
            if v != v:  # NaN
                c.bad_time += 1
                v = clock if clock is not None else 0.0
            else:
                v += day
                if clock is not None and v < clock - _HALF_DAY:
                    day += 86_400.0
                    v += 86_400.0
            if clock is not None and v < clock:
                c.clamped += 1
                v = clock
            out[i] = clock = v
        self.clock, self.day = clock, day
        return out

    def update(self, columns: Mapping[str, np.ndarray], packet: Mapping[str, np.ndarray]) -> npt.NDArray[np.float32]:
        """Window features of the next rows of the stream.

        ``columns`` holds the raw :data:`iotad.data.schema.STREAM_COLUMNS`, ``packet`` the parsed
        ``tcp.flags``, ``tcp.len`` and ``mqtt.msgtype`` of the same rows.
        """
        n = len(columns["frame.time"])
        self.counters.rows += n
        t = self._times(columns["frame.time"])
        flags = np.nan_to_num(packet["tcp.flags"]).astype(np.int64)
        msgtype = packet["mqtt.msgtype"]
        indicators = np.stack([
            ((flags & 0x02) != 0) & ((flags & 0x10) == 0), (flags & 0x04) != 0, (flags & 0x01) != 0,
            msgtype == 1, msgtype == 2,
        ], axis=1).astype(np.float64)
        assert indicators.shape[1] == len(INDICATORS)
        keys = stream_keys(columns)
        k_src, k_dst, k_pair, _ = keys
        back_pair: list[Key | None] = [None if p is None else (p[1], p[0]) for p in k_pair]  # type: ignore[index]
        mirror_keys: tuple[list[Key | None], ...] = (k_src, k_dst, back_pair, [])
        out = np.empty((n, N_WINDOW_FEATURES), dtype=np.float32)  # also the shape of an empty block
        parts = []
        step = max(self.capacity // 2, 1)  # at most capacity/2 new keys per block: eviction stays possible
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            slots = np.empty((hi - lo, len(TABLES)), dtype=np.int64)
            for k, table in enumerate(self.tables):
                slots[:, k], evicted = table.assign(keys[k][lo:hi], self.last[k], self.sums[k])
                self.counters.evicted[TABLES[k]] += evicted
            mirror = np.full_like(slots, -1)
            for k, m in enumerate(MIRROR_OF):
                if m >= 0:
                    mirror[:, k] = self.tables[m].find(mirror_keys[k][lo:hi])
            parts.append(update_windows(t[lo:hi], packet["tcp.len"][lo:hi], indicators[lo:hi], slots, mirror,
                                        self.last, self.sums))
        if parts:
            out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out
