"""Autoencoder shape, bounds and the absence of BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

from iotad.model import Autoencoder


def test_output_shape_and_tanh_bounds() -> None:
    model = Autoencoder(71)
    x = torch.randn(64, 71) * 10
    y = model(x)
    assert y.shape == (64, 71)
    assert y.abs().max() <= 1.0


def test_layer_widths_mirror_hidden() -> None:
    model = Autoencoder(71, hidden=(128, 64, 32, 16))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    widths = [(m.in_features, m.out_features) for m in linears]
    assert widths == [(71, 128), (128, 64), (64, 32), (32, 16), (16, 32), (32, 64), (64, 128), (128, 71)]
    assert isinstance(list(model.decoder)[-1], nn.Tanh)


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
    model = Autoencoder(20, hidden=(16, 8), dropout=0.1)
    clone = Autoencoder(**model.hyperparams())
    assert [v.shape for v in clone.state_dict().values()] == [v.shape for v in model.state_dict().values()]
    assert model.hyperparams() == {"n_features": 20, "hidden": [16, 8], "dropout": 0.1}
