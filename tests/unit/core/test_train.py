"""Local training loop: learns, is seeded, FedProx pulls towards the global weights, weights round-trip."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from iotad.core.model import Autoencoder
from iotad.core.scoring import reconstruction_errors
from iotad.core.train import (
    TrainConfig,
    bf16_supported,
    effective_batch_size,
    get_weights,
    lr_schedule,
    set_weights,
    train_autoencoder,
)


def _data(n: int = 2000, d: int = 12, seed: int = 0) -> np.ndarray:
    """Low-rank data in [-1, 1]: an autoencoder with a small bottleneck can learn it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    return np.tanh(z @ rng.normal(size=(3, d)) * 0.5).astype(np.float32)


def _model(d: int = 12, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(d, hidden=(32, 16, 4), dropout=0.0)


def test_training_reduces_loss_and_reports_counts() -> None:
    x = _data()
    cfg = TrainConfig(epochs=15, batch_size=256, lr=3e-3, seed=1, threads=1, lr_schedule="constant")
    res = train_autoencoder(_model(), x, cfg)
    assert len(res.epoch_losses) == 15
    assert res.samples == 15 * len(x)
    assert res.seconds > 0
    assert res.epoch_losses[-1] < 0.5 * res.epoch_losses[0]


def test_epoch_loss_is_mean_mse() -> None:
    x = _data(500)
    model = _model()
    before = float(np.mean(reconstruction_errors(model, x)))
    res = train_autoencoder(model, x, TrainConfig(epochs=1, lr=0.0, batch_size=128, threads=1))
    # lr 0: weights unchanged and no dropout, so the epoch loss is the mean per-row MSE.
    assert res.epoch_losses[0] == pytest.approx(before, rel=1e-5)


def test_same_seed_same_weights_different_seed_differs() -> None:
    x = _data(800)
    runs = []
    for seed in (3, 3, 4):
        model = Autoencoder(12, hidden=(16, 4), dropout=0.2)
        set_weights(model, get_weights(_init(12)))
        train_autoencoder(model, x, TrainConfig(epochs=2, batch_size=64, seed=seed, threads=1))
        runs.append(get_weights(model))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def _init(d: int) -> Autoencoder:
    torch.manual_seed(123)
    return Autoencoder(d, hidden=(16, 4), dropout=0.2)


def test_global_rng_is_left_untouched() -> None:
    model, x = _model(), _data(300)
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    train_autoencoder(model, x, TrainConfig(epochs=1, batch_size=64, threads=1))
    assert torch.equal(torch.rand(3), expected)


def test_fedprox_keeps_weights_closer_to_global() -> None:
    x = _data(1000, seed=5)
    start = get_weights(_model(seed=7))

    def drift(mu: float) -> float:
        model = _model()
        set_weights(model, start)
        cfg = TrainConfig(epochs=5, batch_size=128, lr=1e-2, proximal_mu=mu, seed=0, threads=1)
        train_autoencoder(model, x, cfg, global_params=start)
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(get_weights(model), start, strict=True)))

    assert drift(10.0) < 0.5 * drift(0.0)


def test_fedprox_rejects_wrong_global_params() -> None:
    cfg = TrainConfig(epochs=1, proximal_mu=0.1, threads=1)
    with pytest.raises(ValueError, match="global_params"):
        train_autoencoder(_model(), _data(100), cfg, global_params=[np.zeros(3)])


def test_small_data_still_gets_several_steps() -> None:
    cfg = TrainConfig(batch_size=4096, min_steps=8)
    assert effective_batch_size(1000, cfg) == 125
    assert effective_batch_size(100, cfg) == 32
    assert effective_batch_size(10_000_000, cfg) == 4096


def test_reconstruction_errors_match_manual_mse_and_keep_mode() -> None:
    x = _data(100)
    model = Autoencoder(12, hidden=(8, 4), dropout=0.5, members=3)
    model.train()
    errs = reconstruction_errors(model, x, batch_size=7)
    assert errs.dtype == np.float64 and errs.shape == (100,)
    model.eval()
    with torch.no_grad():  # the mean over the members of each member's MSE
        xt = torch.from_numpy(x)
        manual = np.mean([((net(xt) - xt) ** 2).mean(dim=1).numpy() for net in model.nets], axis=0)
    np.testing.assert_allclose(errs, manual, rtol=1e-6)
    model.train()
    reconstruction_errors(model, x)
    assert model.training


def test_weights_round_trip_in_state_dict_order() -> None:
    a, b = _model(seed=1), _model(seed=2)
    weights = get_weights(a)
    assert [w.shape for w in weights] == [tuple(v.shape) for v in a.state_dict().values()]
    set_weights(b, weights)
    for w, v in zip(weights, get_weights(b), strict=True):
        np.testing.assert_array_equal(w, v)
    weights[0][...] = 0  # copies: changing them does not touch the model
    assert not np.all(get_weights(a)[0] == 0)


def test_set_weights_rejects_wrong_shapes() -> None:
    model = _model()
    weights = get_weights(model)
    with pytest.raises(ValueError, match="expected"):
        set_weights(model, weights[:-1])
    weights[0] = np.zeros((1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        set_weights(model, weights)


def test_rejects_empty_data() -> None:
    with pytest.raises(ValueError, match="no training rows"):
        train_autoencoder(_model(), np.zeros((0, 12), np.float32), TrainConfig(epochs=1))


def test_cosine_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(lr=1e-2, lr_schedule="cosine", warmup=0.1, final_lr=0.02)
    lrs = lr_schedule(cfg, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-2 * (0.1 + 0.9 / 10))
    assert max(lrs) == pytest.approx(1e-2)
    assert lrs[9] == pytest.approx(1e-2)  # end of warm-up
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then non-increasing
    assert lrs[-1] == pytest.approx(2e-4)
    assert lr_schedule(TrainConfig(lr=3e-3, lr_schedule="constant"), 5) == [3e-3] * 5
    assert lr_schedule(TrainConfig(lr_schedule="cosine"), 0) == []


def test_schedule_parts_concatenate_to_the_run_wide_schedule() -> None:
    cfg = TrainConfig(lr=1e-2, lr_schedule="cosine", warmup=0.1, final_lr=0.02)
    whole = lr_schedule(cfg, 5 * 40)
    parts = [lr_schedule(replace(cfg, schedule_part=k, schedule_parts=5), 40) for k in range(5)]
    assert [lr for part in parts for lr in part] == whole
    assert parts[0][0] < parts[0][-1] and parts[-1][-1] == pytest.approx(2e-4)  # warm-up only in round 1
    with pytest.raises(ValueError, match="schedule_part"):
        lr_schedule(replace(cfg, schedule_part=5, schedule_parts=5), 40)


def test_bad_schedule_or_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        train_autoencoder(_model(), _data(100), TrainConfig(epochs=0, lr_schedule="step"))
    with pytest.raises(ValueError, match="precision"):
        train_autoencoder(_model(), _data(100), TrainConfig(epochs=1, precision="fp8"))


@pytest.mark.parametrize("fused", [True, False])
def test_cosine_training_learns_and_is_seeded(fused: bool) -> None:
    x = _data()
    cfg = TrainConfig(epochs=15, batch_size=128, lr=1e-2, lr_schedule="cosine", fused=fused, seed=2, threads=1)
    weights = []
    for _ in range(2):
        model = _model()
        res = train_autoencoder(model, x, cfg)
        assert res.epoch_losses[-1] < 0.5 * res.epoch_losses[0]
        weights.append(get_weights(model))
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))


def test_fused_and_foreach_adam_agree() -> None:
    x = _data(600)
    out = []
    for fused in (True, False):
        model = _model()
        train_autoencoder(model, x, TrainConfig(epochs=2, batch_size=64, lr=1e-3, fused=fused, threads=1))
        out.append(get_weights(model))
    for a, b in zip(out[0], out[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_fedprox_works_with_cosine_schedule() -> None:
    x = _data(1000, seed=5)
    start = get_weights(_model(seed=7))

    def drift(mu: float) -> float:
        model = _model()
        set_weights(model, start)
        cfg = TrainConfig(epochs=5, batch_size=128, lr=1e-2, lr_schedule="cosine", proximal_mu=mu, threads=1)
        train_autoencoder(model, x, cfg, global_params=start)
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(get_weights(model), start, strict=True)))

    assert drift(10.0) < 0.5 * drift(0.0)


@pytest.mark.skipif(not bf16_supported(), reason="no native bf16 on this CPU")
def test_bf16_autocast_trains() -> None:
    x = _data()
    model = _model()
    res = train_autoencoder(model, x, TrainConfig(epochs=15, batch_size=128, lr=1e-2, precision="bf16", threads=1))
    assert res.epoch_losses[-1] < 0.5 * res.epoch_losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
