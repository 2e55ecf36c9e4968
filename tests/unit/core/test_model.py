"""Autoencoder shape, bounds, ensemble layout and the absence of BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iotad.core.bundle import model_members
from iotad.core.model import DEFAULT_MEMBERS, Autoencoder
from iotad.core.train import get_weights


def test_output_shape_and_tanh_bounds() -> None:
    model = Autoencoder(71)
    x = torch.randn(64, 71) * 10
    y = model(x)
    assert y.shape == (64, DEFAULT_MEMBERS * 71) and model.n_outputs == DEFAULT_MEMBERS * 71
    assert y.abs().max() <= 1.0
    assert Autoencoder(71, members=1)(x).shape == (64, 71)


def test_members_reconstruct_side_by_side() -> None:
    torch.manual_seed(0)
    model = Autoencoder(10, hidden=(8, 4), members=3).eval()
    x = torch.randn(5, 10)
    y = model(x)
    for k, net in enumerate(model.nets):
        assert torch.equal(y[:, k * 10 : (k + 1) * 10], net(x))
    # Independently initialised: the members differ.
    assert not torch.equal(y[:, :10], y[:, 10:20])


def test_a_one_member_model_is_initialised_as_the_single_autoencoder_was() -> None:
    # The first member draws the same initial weights whatever the ensemble size (same RNG order).
    torch.manual_seed(7)
    one = get_weights(Autoencoder(10, hidden=(8, 4), members=1))
    torch.manual_seed(7)
    three = get_weights(Autoencoder(10, hidden=(8, 4), members=3))
    assert all((a == b).all() for a, b in zip(one, three[: len(one)], strict=True))


def test_member_count_follows_from_the_weights() -> None:
    weights = get_weights(Autoencoder(10, hidden=(8, 4), members=3))
    assert model_members(weights, 10, (8, 4)) == 3
    assert Autoencoder.for_weights(weights, 10, (8, 4)).members == 3
    with pytest.raises(ValueError, match="whole members"):
        model_members(weights[:-1], 10, (8, 4))
    with pytest.raises(ValueError, match="members"):
        Autoencoder(10, members=0)


def test_layer_widths_mirror_hidden() -> None:
    model = Autoencoder(71, hidden=(128, 64, 32, 16), members=2)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    widths = [(m.in_features, m.out_features) for m in linears]
    member = [(71, 128), (128, 64), (64, 32), (32, 16), (16, 32), (32, 64), (64, 128), (128, 71)]
    assert widths == member * 2
    assert all(isinstance(list(net.decoder)[-1], nn.Tanh) for net in model.nets)


def test_no_batchnorm_and_no_buffers() -> None:
    model = Autoencoder(71)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # Only parameters in the state: FedAvg averages everything it receives.
    assert len(model.state_dict()) == len(list(model.parameters()))


def test_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = Autoencoder(10, hidden=(32, 4), dropout=0.5)
    x = torch.randn(8, 10)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_zero_dropout_has_no_dropout_layers() -> None:
    model = Autoencoder(10, hidden=(8, 4), dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_hyperparams_rebuild_same_shapes() -> None:
    model = Autoencoder(20, hidden=(16, 8), dropout=0.1, members=2)
    clone = Autoencoder(**model.hyperparams())
    assert [v.shape for v in clone.state_dict().values()] == [v.shape for v in model.state_dict().values()]
    assert model.hyperparams() == {"n_features": 20, "hidden": [16, 8], "dropout": 0.1, "members": 2}
