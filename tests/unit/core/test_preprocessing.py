"""Scaling statistics merge exactly and the scaler is bounded and safe on constant columns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iotad.core.preprocessing import CLIP, FeatureStats, Scaler, signed_log1p


def _features(n: int, seed: int) -> np.ndarray:
    """Heavy-tailed counters/ids, small ints, 0/1 flags, a one-hot pair and a constant column."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4_000_000_000, size=n).astype(np.float64)
    counts = np.floor(rng.pareto(1.2, size=n) * 100)
    small = rng.integers(0, 8, size=n)
    flag = rng.integers(0, 2, size=n)
    onehot = np.eye(2)[rng.integers(0, 2, size=n)]
    const = np.full(n, 5.0)
    return np.column_stack([ids, counts, small, flag, onehot, const]).astype(np.float32)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=0)


def test_signed_log1p_is_odd_and_zero_at_zero() -> None:
    x = np.array([-10.0, -1.0, 0.0, 1.0, 10.0])
    t = signed_log1p(x)
    assert t[2] == 0.0
    np.testing.assert_allclose(t[:2], -t[[4, 3]])
    assert t[4] == pytest.approx(np.log1p(10.0))


def test_merge_of_parts_equals_stats_of_union() -> None:
    x = _features(3000, 1)
    whole = FeatureStats.of(x)
    parts = [FeatureStats.of(p) for p in np.array_split(x, [100, 1700, 1701])]
    merged = FeatureStats.merge_all(parts)
    assert merged.count == whole.count == 3000
    for name in ("sum", "sumsq", "min", "max"):
        _close(getattr(merged, name), getattr(whole, name))


def test_empty_part_is_merge_identity_and_json_safe() -> None:
    x = _features(50, 2)
    empty = FeatureStats.of(x[:0])
    assert empty.count == 0
    merged = empty.merge(FeatureStats.of(x))
    _close(merged.min, FeatureStats.of(x).min)
    text = json.dumps(empty.to_dict(), allow_nan=False)  # inf must not leak into JSON
    back = FeatureStats.from_dict(json.loads(text))
    assert np.isposinf(back.min).all() and np.isneginf(back.max).all()


def test_stats_round_trip_through_json() -> None:
    s = FeatureStats.of(_features(200, 3))
    back = FeatureStats.from_dict(json.loads(json.dumps(s.to_dict(), allow_nan=False)))
    assert back.count == s.count
    for name in ("sum", "sumsq", "min", "max"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))


def test_merge_rejects_different_widths() -> None:
    with pytest.raises(ValueError, match="features"):
        FeatureStats.empty(3).merge(FeatureStats.empty(4))


def test_stats_reject_non_finite() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        FeatureStats.of(np.array([[np.nan, 1.0]]))


def test_scaler_maps_training_range_to_minus_one_one() -> None:
    x = _features(2000, 4)
    scaler = Scaler.from_stats(FeatureStats.of(x))
    z = scaler.transform(x)
    assert z.dtype == np.float32
    assert np.isfinite(z).all()
    assert z.min() >= -1.0 - 1e-5 and z.max() <= 1.0 + 1e-5
    varying = np.ptp(x, axis=0) > 0
    np.testing.assert_allclose(z[:, varying].min(axis=0), -1.0, atol=1e-5)
    np.testing.assert_allclose(z[:, varying].max(axis=0), 1.0, atol=1e-5)


def test_constant_column_maps_to_zero_and_still_shows_change() -> None:
    x = _features(100, 5)
    scaler = Scaler.fit(x)
    z = scaler.transform(x)
    np.testing.assert_array_equal(z[:, -1], 0.0)
    changed = x[:1].copy()
    changed[0, -1] = 500.0
    assert scaler.transform(changed)[0, -1] > 0.5


def test_absurd_values_are_clipped() -> None:
    x = _features(100, 6)
    scaler = Scaler.fit(x)
    weird = np.full((2, x.shape[1]), 1e30, dtype=np.float32)
    weird[1] = -1e30
    z = scaler.transform(weird)
    assert z.max() <= CLIP and z.min() >= -CLIP
    assert z[0].max() == CLIP and z[1].min() == -CLIP


def test_scaler_is_equal_from_merged_stats_and_round_trips() -> None:
    x = _features(1000, 7)
    a = Scaler.from_stats(FeatureStats.of(x[:400]).merge(FeatureStats.of(x[400:])))
    b = Scaler.fit(x)
    np.testing.assert_allclose(a.transform(x), b.transform(x), rtol=1e-6, atol=1e-6)
    c = Scaler.from_dict(json.loads(json.dumps(a.to_dict(), allow_nan=False)))
    np.testing.assert_array_equal(c.transform(x), a.transform(x))


def test_scaler_from_empty_stats_is_usable() -> None:
    scaler = Scaler.from_stats(FeatureStats.empty(3))
    z = scaler.transform(np.zeros((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(z, 0.0)
    json.dumps(scaler.to_dict(), allow_nan=False)


def test_scaler_rejects_wrong_width() -> None:
    scaler = Scaler.fit(_features(10, 8))
    with pytest.raises(ValueError, match="expects 7 features"):
        scaler.transform(np.zeros((1, 6), dtype=np.float32))


def test_residual_scale_merges_like_pooled_rows_and_round_trips() -> None:
    from iotad.core.preprocessing import RESIDUAL_VAR_FLOOR, ResidualScale

    rng = np.random.default_rng(0)
    r = rng.normal(0.0, [1.0, 0.1, 0.0001, 0.5], size=(300, 4))
    parts = [ResidualScale.of(r[:100]), ResidualScale.of(r[100:250]), ResidualScale.of(r[250:]),
             ResidualScale.empty(4)]
    merged = ResidualScale.merge_all(parts)
    pooled = ResidualScale.of(r)
    assert merged.count == pooled.count == 300
    np.testing.assert_allclose(merged.sumsq, pooled.sumsq, rtol=1e-12)
    var = merged.variance
    np.testing.assert_allclose(var[:2], np.mean(r[:, :2] ** 2, axis=0), rtol=1e-12)
    assert var[2] == RESIDUAL_VAR_FLOOR  # near-deterministic feature: floored, not a huge weight
    # weights give the mean squared z-score: 1 on average over the summarised rows (without the floor)
    z = (r[:, [0, 1, 3]] ** 2 * merged.weights[[0, 1, 3]]).sum(1) * 4 / 3
    assert np.mean(z) == pytest.approx(1.0, rel=1e-5)
    back = ResidualScale.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert back.count == merged.count and back.floor == merged.floor
    np.testing.assert_array_equal(back.sumsq, merged.sumsq)
    with pytest.raises(ValueError):
        merged.merge(ResidualScale.empty(3))
    with pytest.raises(ValueError):
        ResidualScale.from_dict({"count": 1, "sumsq": [-1.0]})
    assert ResidualScale.empty(2).variance.tolist() == [RESIDUAL_VAR_FLOOR] * 2
