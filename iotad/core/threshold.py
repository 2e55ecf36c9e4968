"""Reconstruction-error histograms on fixed bins, and thresholds taken from them.

Every device bins errors on the same :data:`ERROR_BIN_EDGES`, so federated histograms merge by summation
and a global quantile is read from the merged histogram without any per-row error leaving a device.

Bins: :data:`N_BINS` log-spaced bins over [:data:`ERROR_MIN`, :data:`ERROR_MAX`] = [1e-8, 1e2]
(10 decades). Each bin spans a factor :data:`BIN_RATIO` = 10**(10/2048) ~= 1.0113, i.e. a relative
resolution of ~1.13 %. Scaled inputs are clipped to [-3, 3] and the decoder output is in [-1, 1], so a
per-row MSE is at most 16: the top edge is never reached in practice. Bin ``i`` holds errors ``e`` with
``edges[i] <= e < edges[i + 1]``; errors below ``edges[0]`` go to bin 0, errors at or above ``edges[-1]``
to the last bin.

Exactness: for a threshold ``t = edges[k]`` with ``1 <= k <= N_BINS - 1``,
``count(errors >= t) == hist[k:].sum()`` exactly. :func:`threshold_from_histogram` only returns such edges.

Tolerance vs. the exact quantile: with ``q_exact = exact_quantile(errors, q)`` (the ``ceil(q * n)``-th
smallest error, i.e. ``np.quantile(errors, q, method="inverted_cdf")``), the threshold
``threshold_from_histogram(error_histogram(errors), q)`` is the smallest edge strictly above ``q_exact``,
so ``q_exact < threshold <= q_exact * BIN_RATIO`` whenever ``q_exact`` lies in [edges[0], edges[-2]).
Against numpy's default (linear) quantile the gap can also include the distance to the neighbouring
order statistic.
"""

from __future__ import annotations

import numpy as np

ERROR_MIN = 1e-8
ERROR_MAX = 1e2
N_BINS = 2048
ERROR_BIN_EDGES: np.ndarray = np.logspace(np.log10(ERROR_MIN), np.log10(ERROR_MAX), N_BINS + 1)
ERROR_BIN_EDGES.setflags(write=False)
BIN_RATIO = float(ERROR_BIN_EDGES[1] / ERROR_BIN_EDGES[0])


def bin_index(errors: np.ndarray) -> np.ndarray:
    """Bin of each error (int64), with under/overflow folded into the first/last bin; NaN rejected."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    if np.isnan(e).any():
        raise ValueError("errors contain NaN")
    idx = np.searchsorted(ERROR_BIN_EDGES, e, side="right") - 1
    return np.clip(idx, 0, N_BINS - 1)


def error_histogram(errors: np.ndarray) -> np.ndarray:
    """Counts (int64, shape (N_BINS,)) of ``errors`` on :data:`ERROR_BIN_EDGES`."""
    return np.bincount(bin_index(errors), minlength=N_BINS).astype(np.int64)


def _check_hist(hist: np.ndarray) -> np.ndarray:
    h = np.asarray(hist)
    if h.shape != (N_BINS,):
        raise ValueError(f"histogram must have shape ({N_BINS},), got {h.shape}")
    if (h < 0).any():
        raise ValueError("histogram counts must be non-negative")
    return h.astype(np.int64)


def threshold_from_histogram(hist: np.ndarray, quantile: float) -> float:
    """Smallest bin edge ``t`` with at least ``ceil(quantile * n)`` errors below it.

    So at most a fraction ``1 - quantile`` of the summarised (normal) errors are ``>= t``, i.e. the false
    positive rate on them is at most ``1 - quantile``. ``t`` is an inner edge (never ``edges[0]`` nor
    ``edges[-1]``), so counts at or above it are exact from any histogram on the same edges.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be in (0, 1)")
    h = _check_hist(hist)
    n = int(h.sum())
    if n == 0:
        raise ValueError("empty histogram: no errors to take a threshold from")
    need = quantile_rank(n, quantile)
    below = np.cumsum(h)  # below[k - 1] = count(errors < edges[k]) for 1 <= k <= N_BINS - 1
    k = int(np.searchsorted(below, need, side="left")) + 1
    k = min(max(k, 1), N_BINS - 1)
    return float(ERROR_BIN_EDGES[k])


def count_at_or_above(hist: np.ndarray, threshold: float) -> int:
    """``count(errors >= threshold)`` from a histogram; exact when ``threshold`` is an inner bin edge."""
    h = _check_hist(hist)
    return int(h[edge_index(threshold) :].sum())


def edge_index(threshold: float) -> int:
    """Index ``k`` of the first bin counted as ``>= threshold`` (the smallest edge ``>= threshold``)."""
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    return int(np.searchsorted(ERROR_BIN_EDGES, threshold, side="left"))


def quantile_rank(n: int, quantile: float) -> int:
    """1-based rank ``ceil(quantile * n)`` in [1, n], ignoring float noise (0.99 * 100 is rank 99)."""
    r = int(np.ceil(quantile * n - 1e-9 * max(n, 1)))
    return min(max(r, 1), n)


def exact_quantile(errors: np.ndarray, quantile: float) -> float:
    """The ``quantile_rank(n, quantile)``-th smallest error: numpy's ``inverted_cdf`` quantile except
    that ``quantile * n`` within float noise of an integer counts as that integer. Reference for tests."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size == 0:
        raise ValueError("no errors")
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be in (0, 1)")
    r = quantile_rank(e.size, quantile)
    return float(np.partition(e, r - 1)[r - 1])
