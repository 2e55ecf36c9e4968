"""The compiled quantile map against the map computed in log space (the scaler's definition)."""

from __future__ import annotations

import numpy as np
import pytest

from iotad.core.normalisation import QuantileScaler
from iotad.core.preprocessing import signed_log1p
from iotad.core.quantile_map import raw_bound


def log_space_map(s: QuantileScaler, x: np.ndarray) -> np.ndarray:
    """The definition: mid-rank search of signed_log1p(x) among the quantiles, linear beyond them, clipped."""
    logged = signed_log1p(x)
    out = np.empty(x.shape, dtype=np.float32)
    low, high = s.quantiles[0], s.quantiles[-1]
    for j, (values, gap, tie) in enumerate(s._grids):
        col = logged[:, j]
        i = np.searchsorted(values, col)
        exact = values[np.minimum(i, len(values) - 1)] == col
        out[:, j] = np.where(exact, tie[i], gap[i])
        below, above = col < low[j], col > high[j]
        out[below, j] = -1.0 - (low[j] - col[below]) / s._span[j]
        out[above, j] = 1.0 + (col[above] - high[j]) / s._span[j]
    np.clip(out, -s.clip, s.clip, out=out)
    return out


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Columns like the features: mostly-zero flags, small integers, heavy tails, signed values, a constant."""
    return np.column_stack([
        rng.random(n) < 0.1, rng.integers(0, 5, n), rng.integers(0, 65536, n), rng.exponential(1e3, n),
        rng.lognormal(0, 3, n), rng.standard_normal(n) * 50, np.full(n, 7.0), rng.random(n) * 1e-9,
    ]).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_map_equals_the_log_space_map(dtype: type) -> None:
    rng = np.random.default_rng(3)
    train = rows(rng, 5000)
    s = QuantileScaler.fit(train)
    # fitted rows (ties with the quantiles of the flag and integer columns), new rows, rows beyond the range
    x = np.concatenate([train[:500], rows(rng, 3000), rows(rng, 300) * 40 - 20]).astype(dtype)
    x[50:60, 3] = [np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, 1e-300, -1e-300, 3.4e38, -3.4e38]
    got, want = s.transform(x), log_space_map(s, x.astype(np.float64))
    beyond = (signed_log1p(x) < s.quantiles[0]) | (signed_log1p(x) > s.quantiles[-1])
    np.testing.assert_array_equal(got[~beyond], want[~beyond])  # ranks: bit-identical
    np.testing.assert_allclose(got[beyond], want[beyond], rtol=1e-6)  # linear tail: one log1p each


def test_nan_maps_as_in_log_space() -> None:
    s = QuantileScaler.fit(rows(np.random.default_rng(0), 500))
    x = np.full((2, 8), np.nan, dtype=np.float32)
    np.testing.assert_array_equal(s.transform(x), np.ones((2, 8), dtype=np.float32))


def test_raw_bound_is_the_least_value_reaching_the_log() -> None:
    v = signed_log1p(np.array([-1e6, -3.0, -1e-12, 0.0, 1e-12, 0.5, 1.0, 12345.678, 1e30]))
    for strict in (False, True):
        b = raw_bound(v, strict)
        f, f_before = signed_log1p(b), signed_log1p(np.nextafter(b, -np.inf))
        assert ((f > v) if strict else (f >= v)).all()
        assert ((f_before <= v) if strict else (f_before < v)).all()
