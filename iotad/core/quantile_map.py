"""The quantile scaler's map as one compiled pass over raw values, without a logarithm per value.

:class:`iotad.core.normalisation.QuantileScaler` compares ``signed_log1p(x)`` with its quantiles. Since the
function is monotone, each comparison with a quantile ``v`` is a comparison of ``x`` itself with the raw
bounds ``lo = min{x: f(x) >= v}`` and ``hi = min{x: f(x) > v}``, found once per quantile by bisection over
the float64 values. The map is then a binary search per value on raw bounds (the per-value logarithm was
two thirds of the scaling cost); only values beyond the fitted range, which continue linearly in log
space, take the logarithm. Exactly the same result as searching in log space.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

_SIGN = np.uint64(1 << 63)


def _to_ordered(x: np.ndarray) -> np.ndarray:
    """float64 -> uint64 with the same order (-0.0 and 0.0 both map to 2**63)."""
    bits = np.asarray(x, dtype=np.float64).view(np.uint64)
    negative = (bits & _SIGN) != 0
    return np.where(negative, _SIGN - (bits & ~_SIGN), bits | _SIGN)


def _from_ordered(k: np.ndarray) -> np.ndarray:
    negative = k < _SIGN
    bits = np.where(negative, (_SIGN - k) | _SIGN, k & ~_SIGN)
    return bits.view(np.float64)


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def raw_bound(v: np.ndarray, strict: bool) -> np.ndarray:
    """The least float64 ``x`` with ``signed_log1p(x) >= v`` (``> v`` when ``strict``), per element."""
    v = np.asarray(v, dtype=np.float64)
    big = np.finfo(np.float64).max
    lo = np.full(v.shape, _to_ordered(np.array(-big)))  # f(lo) below every reachable v: the answer is > lo
    hi = np.full(v.shape, _to_ordered(np.array(big)))  # f(hi) reaches every finite-input v
    for _ in range(66):  # 64-bit keys: converged well before
        if not (hi - lo > 1).any():
            break
        mid = lo + (hi - lo) // np.uint64(2)
        f = _signed_log1p(_from_ordered(mid))
        ok = f > v if strict else f >= v
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return _from_ordered(hi)


@numba.njit(cache=True, nogil=True)
def _map(
    x: npt.NDArray[np.float64],  # (n, F) raw features
    offsets: npt.NDArray[np.int64],  # (F + 1,) each column's slice of the flat arrays below
    lo: npt.NDArray[np.float64],  # least raw value equal (in log space) to each distinct quantile
    hi: npt.NDArray[np.float64],  # least raw value above each distinct quantile
    gap: npt.NDArray[np.float64],  # mid-rank just below each distinct quantile (one extra: 1.0 at the end)
    tie: npt.NDArray[np.float64],  # mid-rank of a value equal to it
    low: npt.NDArray[np.float64],  # (F,) first and last quantile, in log space
    high: npt.NDArray[np.float64],
    span: npt.NDArray[np.float64],
    clip: float,
    out: npt.NDArray[np.float32],
) -> None:
    n, n_features = x.shape
    for i in range(n):
        for j in range(n_features):
            a, b = offsets[j], offsets[j + 1]
            v = x[i, j]
            # the number of distinct quantiles below f(v), i.e. searchsorted(values, f(v), "left"): a
            # branch-free binary search (a conditional move per step, no mispredicted jumps)
            base, size = a, b - a
            while size > 1:
                half = size // 2
                base = base + half if hi[base + half - 1] <= v else base
                size -= half
            left = base + 1 if hi[base] <= v else base
            k = left - a
            r = tie[a + j + k] if left < b and v >= lo[left] else gap[a + j + k]
            if v != v:
                r = 1.0  # NaN: as the log-space search, which puts NaN after every quantile
            elif left == a and v < lo[a]:
                f = math.copysign(math.log1p(abs(v)), v)
                r = -1.0 - (low[j] - f) / span[j]
            elif left == b:
                f = math.copysign(math.log1p(abs(v)), v)
                r = 1.0 + (f - high[j]) / span[j]
            out[i, j] = min(max(r, -clip), clip)


class QuantileMap:
    """The compiled form of a quantile scaler's per-column grids (see the module docstring)."""

    def __init__(self, grids: list[tuple[np.ndarray, np.ndarray, np.ndarray]], low: np.ndarray,
                 high: np.ndarray, span: np.ndarray, clip: float) -> None:
        values = np.concatenate([g[0] for g in grids])
        self._offsets = np.cumsum([0, *(len(g[0]) for g in grids)]).astype(np.int64)
        self._lo, self._hi = raw_bound(values, strict=False), raw_bound(values, strict=True)
        self._gap = np.concatenate([g[1] for g in grids]).astype(np.float64)
        self._tie = np.concatenate([g[2] for g in grids]).astype(np.float64)
        self._low, self._high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self._span = np.asarray(span, np.float64)
        self._clip = float(clip)

    def __call__(self, x: np.ndarray) -> npt.NDArray[np.float32]:
        x64 = np.ascontiguousarray(x, dtype=np.float64)  # as the fit: float64 (exact for float32 input)
        out = np.empty(x64.shape, dtype=np.float32)
        if x64.size:
            _map(x64, self._offsets, self._lo, self._hi, self._gap, self._tie, self._low, self._high,
                 self._span, self._clip, out)
        return out
