"""The per-device quantile scaler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iotad.core.normalisation import (
    MINMAX,
    QUANTILE,
    QuantileScaler,
    check_normalisation,
    fit_scaler,
    scaler_from_dict,
)
from iotad.core.preprocessing import Scaler, signed_log1p


@pytest.fixture
def rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_cauchy((2000, 6))).astype(np.float32)
    x[:, 0] = rng.integers(0, 2, 2000)  # a flag
    x[:, 1] = 0.0  # constant
    x[:, 2] = np.round(x[:, 2])  # heavy ties
    return x


def test_matches_the_mid_rank_among_the_quantiles(rows: np.ndarray) -> None:
    s = QuantileScaler.fit(rows)
    got = s.transform(rows)
    logged, q = signed_log1p(rows), s.quantiles
    steps = 2 * (len(q) - 1)
    for j in range(rows.shape[1]):
        ref = (np.searchsorted(q[:, j], logged[:, j], "left") + np.searchsorted(q[:, j], logged[:, j], "right"))
        np.testing.assert_allclose(got[:, j], ref / steps * 2 - 1, atol=1e-6)
    assert got.dtype == np.float32 and (np.abs(got) <= 1 + 1 / 255 + 1e-6).all()
    # A flag maps to two values, a constant to the middle (its one run spans every quantile).
    assert len(np.unique(got[:, 0])) == 2 and np.allclose(got[:, 1], 0, atol=1 / 255 + 1e-6)


def test_beyond_the_fitted_range_grows_then_clips(rows: np.ndarray) -> None:
    s = QuantileScaler.fit(rows)
    far = rows[:3].copy()
    far[:, 3] = rows[:, 3].max() * np.array([1.01, 1e3, 1e30])
    out = s.transform(far)[:, 3]
    assert 1.0 < out[0] < out[1] <= out[2] == s.clip
    assert s.transform(-rows[:1])[0, 3] < -1.0
    nan = rows[:1].copy()
    nan[0, 4] = np.nan
    assert np.isfinite(s.transform(nan)).all()


def test_round_trips_through_json(rows: np.ndarray) -> None:
    s = QuantileScaler.fit(rows)
    back = scaler_from_dict(json.loads(json.dumps(s.to_dict())))
    assert isinstance(back, QuantileScaler)
    np.testing.assert_array_equal(back.transform(rows), s.transform(rows))
    assert isinstance(scaler_from_dict(Scaler.fit(rows).to_dict()), Scaler)


def test_rejects_bad_input(rows: np.ndarray) -> None:
    with pytest.raises(ValueError):
        QuantileScaler(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="sorted"):
        QuantileScaler(np.array([[1.0], [0.0]]))
    with pytest.raises(ValueError):
        QuantileScaler.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="expects"):
        QuantileScaler.fit(rows).transform(rows[:, :2])
    with pytest.raises(ValueError, match="unknown scaler"):
        fit_scaler(rows, "zscore")
    with pytest.raises(ValueError, match="unknown normalisation"):
        check_normalisation("fleet")
    assert isinstance(fit_scaler(rows, MINMAX), Scaler) and isinstance(fit_scaler(rows, QUANTILE), QuantileScaler)
