"""The emulation's aggregation rules (bench/bench_fedavg_emulation.py) on hand-made updates."""

import numpy as np
import pytest

from bench.bench_fedavg_emulation import FedAdam, Variant, magnitude_mean, mean_update


def test_mean_update_weights_by_rows() -> None:
    replies = [[np.array([1.0, 0.0], dtype=np.float32)], [np.array([4.0, 3.0], dtype=np.float32)]]
    np.testing.assert_allclose(mean_update(replies, [1, 2])[0], [3.0, 2.0])


def test_magnitude_mean_keeps_a_step_only_one_device_takes() -> None:
    start = [np.zeros(2, dtype=np.float32)]
    # Coordinate 0: only device 0 moves it; coordinate 1: both move it by the same amount.
    replies = [[np.array([0.5, 1.0], dtype=np.float32)], [np.array([0.0, 1.0], dtype=np.float32)]]
    np.testing.assert_allclose(magnitude_mean(start, replies, [1, 1], power=1.0)[0], [0.5, 1.0])
    np.testing.assert_allclose(mean_update(replies, [1, 1])[0], [0.25, 1.0])


def test_fedadam_first_step_is_about_server_lr_times_sign() -> None:
    start = [np.zeros(3)]
    mean = [np.array([0.2, -0.5, 0.0])]
    step = FedAdam(start, lr=0.01).step(start, mean)[0]
    # m = 0.1 d and v = 0.99 tau^2 + 0.01 d^2, so the step is close to lr * sign(d) for |d| >> tau.
    d, tau = mean[0], 1e-3
    expected = 0.01 * 0.1 * d / (np.sqrt(0.99 * tau**2 + 0.01 * d**2) + tau)
    np.testing.assert_allclose(step, expected)
    assert 0.009 < step[0] < 0.01 and -0.01 < step[1] < -0.009


def test_variant_parse() -> None:
    assert Variant.parse("central") == Variant(rule="central", epochs=20)
    v = Variant.parse("fedavg:rounds=60,epochs=1,local_scaler=1")
    assert (v.rule, v.rounds, v.epochs, v.local_scaler, v.device_threshold) == ("fedavg", 60, 1, True, False)
    assert Variant.parse("central:local_scaler=1,local_residual=true").local_residual
    assert Variant.parse("fedadam:server_lr=0.03").server_lr == 0.03
    with pytest.raises(ValueError, match="unknown rule"):
        Variant.parse("fedsgd")
    with pytest.raises(ValueError, match="unknown key"):
        Variant.parse("fedavg:no_such_key=1")
