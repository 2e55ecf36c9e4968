"""Detector fit/score/predict and the model bundle (atomic save, validated load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iotad.core.detector import BUNDLE_JSON, WEIGHTS_NPZ, Detector, detector_from_weights
from iotad.core.model import DEFAULT_MEMBERS
from iotad.core.normalisation import scaler_from_dict
from iotad.core.preprocessing import ResidualScale
from iotad.core.scoring import reconstruction_errors, residual_sumsq
from iotad.core.train import TrainConfig, get_weights

N_FEATURES = 6
NAMES = [f"f{i}" for i in range(N_FEATURES)]
FAST = TrainConfig(epochs=4, batch_size=256, lr=3e-3, seed=0, threads=1)


def _normal(n: int, seed: int) -> np.ndarray:
    """Counts that follow one pattern: the autoencoder learns it; attacks break it."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(3.0, 0.3, size=(n, 1))
    cols = [base, base * 2, base * 3, rng.integers(0, 2, size=(n, 1)), base / 2, np.full((n, 1), 7.0)]
    return np.hstack(cols).astype(np.float32)


def _attack(n: int, seed: int) -> np.ndarray:
    x = _normal(n, seed)
    x[:, 1] = np.random.default_rng(seed).lognormal(12.0, 1.0, size=n)
    return x


@pytest.fixture(scope="module")
def fitted() -> Detector:
    det = Detector(N_FEATURES, hidden=(16, 8, 3), dropout=0.0, feature_names=NAMES)
    return det.fit(_normal(4000, 1), _normal(1000, 2), FAST, quantile=0.95)


def test_fit_sets_scaler_threshold_and_calibrated_fpr(fitted: Detector) -> None:
    assert fitted.scaler is not None and fitted.threshold is not None and fitted.threshold > 0
    assert fitted.quantile == 0.95
    assert fitted.train_result is not None and len(fitted.train_result.epoch_losses) == FAST.epochs
    calib = _normal(1000, 2)
    assert fitted.predict(calib).mean() <= 0.05  # threshold is the 95 % quantile of these very rows


def test_scores_rank_attacks_above_normal(fitted: Detector) -> None:
    normal, attack = fitted.decision_function(_normal(500, 3)), fitted.decision_function(_attack(500, 4))
    assert normal.dtype == np.float64
    assert np.median(attack) > np.median(normal)
    pred = fitted.predict(_attack(500, 4))
    assert pred.dtype == np.int8 and set(np.unique(pred)) <= {0, 1}
    assert pred.mean() > 0.9


def test_threshold_is_kept_apart_from_scoring(fitted: Detector, tmp_path: Path) -> None:
    x = _attack(50, 5)
    scores = fitted.decision_function(x)
    np.testing.assert_array_equal(fitted.predict(x), (scores >= fitted.threshold).astype(np.int8))
    np.testing.assert_array_equal(fitted.predict_scores(scores), fitted.predict(x))


def test_wrong_feature_count_is_a_clear_error(fitted: Detector) -> None:
    with pytest.raises(ValueError, match=r"expected features of shape \(rows, 6\)"):
        fitted.decision_function(np.zeros((3, 5), np.float32))


def test_unfitted_detector_refuses_to_score() -> None:
    det = Detector(N_FEATURES)
    with pytest.raises(RuntimeError, match="fit"):
        det.decision_function(np.zeros((1, N_FEATURES), np.float32))


def test_save_load_round_trip(fitted: Detector, tmp_path: Path) -> None:
    fitted.round = 3
    fitted.metadata = {"source": "unit-test", "auc": None}
    out = fitted.save(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == [BUNDLE_JSON, WEIGHTS_NPZ]
    meta = json.loads((out / BUNDLE_JSON).read_text())
    assert meta["n_features"] == N_FEATURES and meta["feature_names"] == NAMES and meta["round"] == 3
    assert meta["model"] == {"n_features": N_FEATURES, "hidden": [16, 8, 3], "dropout": 0.0,
                             "members": DEFAULT_MEMBERS}
    with np.load(out / WEIGHTS_NPZ, allow_pickle=False) as npz:  # plain arrays, no pickle
        assert len(npz.files) == len(get_weights(fitted.model))

    loaded = Detector.load(out, feature_names=NAMES)
    x = np.vstack([_normal(50, 6), _attack(50, 7)])
    np.testing.assert_array_equal(loaded.decision_function(x), fitted.decision_function(x))
    assert loaded.threshold == fitted.threshold and loaded.quantile == 0.95 and loaded.round == 3
    assert loaded.metadata == {"source": "unit-test", "auc": None}
    assert not list(tmp_path.glob(".model.tmp-*"))  # no leftovers


def test_save_replaces_existing_bundle(fitted: Detector, tmp_path: Path) -> None:
    fitted.round = 1
    fitted.save(tmp_path / "m")
    fitted.round = 2
    fitted.save(tmp_path / "m")
    assert Detector.load(tmp_path / "m").round == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_member_count_follows_from_federated_weights(fitted: Detector) -> None:
    one = detector_from_weights(get_weights(fitted.model)[:12], fitted.scaler, 1.0, hidden=(16, 8, 3))
    assert one.model.members == 1
    with pytest.raises(ValueError, match="residual scale has"):
        detector_from_weights(get_weights(fitted.model)[:12], fitted.scaler, 1.0, hidden=(16, 8, 3),
                              residual_scale=fitted.residual_scale)


def test_detector_from_federated_state(fitted: Detector, tmp_path: Path) -> None:
    assert fitted.scaler is not None
    scaler = scaler_from_dict(fitted.scaler.to_dict())
    assert fitted.residual_scale is not None
    residual = ResidualScale.from_dict(fitted.residual_scale.to_dict())
    det = detector_from_weights(
        get_weights(fitted.model), scaler, fitted.threshold, round=5, hidden=(16, 8, 3), dropout=0.0,
        residual_scale=residual,
    )
    x = _attack(20, 8)
    np.testing.assert_array_equal(det.decision_function(x), fitted.decision_function(x))
    det.save(tmp_path / "fed")
    loaded = Detector.load(tmp_path / "fed")
    assert loaded.round == 5
    np.testing.assert_array_equal(loaded.decision_function(x), fitted.decision_function(x))
    # Without a residual scale the detector scores plain reconstruction MSE (older bundles).
    plain = detector_from_weights(get_weights(fitted.model), scaler, None, hidden=(16, 8, 3), dropout=0.0)
    assert scaler is not None
    np.testing.assert_allclose(
        plain.decision_function(x), reconstruction_errors(plain.model, scaler.transform(x)), rtol=1e-6
    )


def test_score_is_mean_squared_z_of_residuals(fitted: Detector) -> None:
    assert fitted.scaler is not None and fitted.residual_scale is not None
    train = _normal(4000, 1)
    x = fitted.scaler.transform(train)
    # The scale was measured on the training rows: their mean score is ~1 (exactly, up to the floor).
    assert fitted.residual_scale.count == len(train)
    np.testing.assert_allclose(
        fitted.residual_scale.sumsq, residual_sumsq(fitted.model, x), rtol=1e-6
    )
    var = fitted.residual_scale.variance
    assert np.mean(fitted.decision_function(train)) <= 1.0 + 1e-6
    assert np.all(var >= fitted.residual_scale.floor)


def test_bundle_without_threshold_loads_but_cannot_predict(fitted: Detector, tmp_path: Path) -> None:
    assert fitted.scaler is not None
    det = detector_from_weights(get_weights(fitted.model), fitted.scaler, None, hidden=(16, 8, 3), dropout=0.0)
    loaded = Detector.load(det.save(tmp_path / "m"))
    assert loaded.threshold is None
    with pytest.raises(RuntimeError, match="threshold"):
        loaded.predict(_normal(2, 9))
