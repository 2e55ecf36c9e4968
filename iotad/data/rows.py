"""What the loader assembles chunks with: a first-occurrence filter and a growable row buffer."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iotad.data.schema import N_FEATURES


class FirstSeen:
    """First-occurrence filter over all rows seen so far, on 64-bit row hashes."""

    def __init__(self) -> None:
        self.seen = np.zeros(0, dtype=np.uint64)  # sorted

    def first_seen(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        unique, first = np.unique(hashes, return_index=True)
        pos = np.searchsorted(self.seen, unique)
        new = pos >= len(self.seen)
        new[~new] = self.seen[pos[~new]] != unique[~new]
        keep = np.zeros(len(hashes), dtype=bool)
        keep[first[new]] = True
        # Two sorted runs: timsort ("stable") merges them in linear time.
        self.seen = np.sort(np.concatenate((self.seen, unique[new])), kind="stable")
        return keep


class RowBuffer:
    """Growable (n, width) float32 buffer.

    ``ndarray.resize`` reallocs in place (mremap for large blocks on Linux), so growing
    never holds two copies of the matrix, unlike collecting chunks and concatenating.
    """

    def __init__(self, width: int = N_FEATURES) -> None:
        self.width = width
        self.array = np.zeros((0, width), dtype=np.float32)
        self.n = 0

    def append(self, rows: npt.NDArray[np.float32]) -> None:
        k = len(rows)
        if self.n + k > len(self.array):
            self.array.resize((self.n + k, self.width), refcheck=False)
        self.array[self.n : self.n + k] = rows
        self.n += k

    def result(self) -> npt.NDArray[np.float32]:
        self.array.resize((self.n, self.width), refcheck=False)
        return self.array
