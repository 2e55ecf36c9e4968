"""Fixed error bins, exact counts at edge thresholds, and the documented quantile tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from iotad.core.threshold import (
    BIN_RATIO,
    ERROR_BIN_EDGES,
    N_BINS,
    count_at_or_above,
    error_histogram,
    exact_quantile,
    threshold_from_histogram,
)


def _errors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=-6.0, sigma=1.5, size=n)


def test_edges_are_fixed_log_spaced() -> None:
    assert ERROR_BIN_EDGES.shape == (N_BINS + 1,)
    assert ERROR_BIN_EDGES[0] == pytest.approx(1e-8) and ERROR_BIN_EDGES[-1] == pytest.approx(1e2)
    ratios = ERROR_BIN_EDGES[1:] / ERROR_BIN_EDGES[:-1]
    np.testing.assert_allclose(ratios, BIN_RATIO, rtol=1e-9)
    assert BIN_RATIO - 1 < 0.012  # ~1.13 % relative resolution
    assert not ERROR_BIN_EDGES.flags.writeable


def test_histogram_counts_everything_with_under_and_overflow() -> None:
    e = np.array([0.0, 1e-12, 1e-8, 1e-3, 1e2, 1e9, np.inf])
    h = error_histogram(e)
    assert h.dtype == np.int64 and h.shape == (N_BINS,)
    assert h.sum() == len(e)
    assert h[0] == 3  # 0, below range, and the first edge itself
    assert h[-1] == 3  # top edge, above range, inf


def test_histogram_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        error_histogram(np.array([1e-3, np.nan]))


def test_value_on_an_edge_goes_to_the_bin_above() -> None:
    k = 1000
    h = error_histogram(np.array([ERROR_BIN_EDGES[k]]))
    assert h[k] == 1
    assert count_at_or_above(h, float(ERROR_BIN_EDGES[k])) == 1
    assert count_at_or_above(h, float(ERROR_BIN_EDGES[k + 1])) == 0


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99, 0.999])
@pytest.mark.parametrize("n", [1, 7, 100, 10_000])
def test_threshold_within_one_bin_above_exact_quantile(q: float, n: int) -> None:
    e = _errors(n, seed=n)
    t = threshold_from_histogram(error_histogram(e), q)
    exact = exact_quantile(e, q)
    assert exact < t <= exact * BIN_RATIO * (1 + 1e-12)
    assert t in ERROR_BIN_EDGES[1:-1]
    # The documented guarantee: at most a (1 - q) fraction of errors reach the threshold ...
    assert np.sum(e >= t) <= (1 - q) * n + 1e-9 * n
    # ... and the count at the threshold is exact from the histogram.
    assert count_at_or_above(error_histogram(e), t) == int(np.sum(e >= t))


def test_exact_quantile_matches_numpy_inverted_cdf() -> None:
    e = _errors(1001, seed=3)
    for q in (0.1, 0.5, 0.973, 0.99):
        assert exact_quantile(e, q) == np.quantile(e, q, method="inverted_cdf")
    # and stays within a bin (plus one order statistic) of numpy's default linear quantile
    t = threshold_from_histogram(error_histogram(e), 0.99)
    lin = np.quantile(e, 0.99)
    s = np.sort(e)
    assert s[np.searchsorted(s, lin) - 1] <= t and abs(t / lin - 1) < 0.05


def test_float_noise_in_q_times_n_is_ignored() -> None:
    e = np.arange(1, 101, dtype=np.float64) * 1e-4
    # 0.99 * 100 = 99.00000000000001: rank 99, not 100.
    assert exact_quantile(e, 0.99) == e[98]
    t = threshold_from_histogram(error_histogram(e), 0.99)
    assert np.sum(e >= t) == 1


def test_merged_histograms_give_the_union_threshold() -> None:
    e = _errors(5000, seed=9)
    parts = np.array_split(e, [10, 2000, 4999])
    merged = sum((error_histogram(p) for p in parts), np.zeros(N_BINS, np.int64))
    np.testing.assert_array_equal(merged, error_histogram(e))
    assert threshold_from_histogram(merged, 0.99) == threshold_from_histogram(error_histogram(e), 0.99)


def test_threshold_input_validation() -> None:
    h = error_histogram(_errors(10, 1))
    for q in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="quantile"):
            threshold_from_histogram(h, q)
    with pytest.raises(ValueError, match="empty"):
        threshold_from_histogram(np.zeros(N_BINS, np.int64), 0.9)
    with pytest.raises(ValueError, match="shape"):
        threshold_from_histogram(np.ones(10, np.int64), 0.9)


def test_errors_above_range_give_top_inner_edge() -> None:
    t = threshold_from_histogram(error_histogram(np.full(10, 1e6)), 0.5)
    assert t == ERROR_BIN_EDGES[-2]
