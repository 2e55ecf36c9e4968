"""Dense autoencoder (an ensemble of small mirror MLPs) for encoded, scaled traffic features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from iotad.core.bundle import model_members

# The default shape lives in the torch-free bundle module (the aggregator writes bundles without torch).
from iotad.core.shapes import DEFAULT_DROPOUT, DEFAULT_HIDDEN, DEFAULT_MEMBERS


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from numpy's PCG64 as bytes.

    ``nn.Dropout`` on CPU spends most of its time in torch's Bernoulli sampler (measured: ~11 ms of a
    ~21 ms training step at batch 2048 for this model); one random byte per unit costs ~1 ms. The drop
    probability is quantised to 1/256 (0.2 -> 51/256 = 0.1992). The generator is seeded from torch's
    RNG on every call, so ``torch.manual_seed`` makes training reproducible as with ``nn.Dropout``.
    Identity in eval mode; no parameters or buffers.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        self.p = float(p)
        self._cut = round(self.p * 256)
        self._scale = 256.0 / (256 - self._cut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._cut == 0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = np.random.Generator(np.random.PCG64(seed))
        keep = rng.integers(0, 256, size=tuple(x.shape), dtype=np.uint8) >= self._cut
        mask = torch.from_numpy(keep).to(x.dtype).mul_(self._scale)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MirrorAutoencoder(nn.Module):
    """Symmetric MLP autoencoder: n -> hidden... -> bottleneck -> ...hidden -> n (one ensemble member).

    ReLU (torch's CPU LeakyReLU kernel measured 3x slower per call); dropout follows every
    hidden layer except the bottleneck; Tanh bounds the output to [-1, 1] (the scaled training range,
    so values scaled outside it cannot be reconstructed and raise the error). No BatchNorm: running
    statistics do not average well across devices in FedAvg.

    Parameters
    ----------
    n_features : int
        Input (and output) width.
    hidden : sequence of int
        Encoder widths; the last one is the bottleneck. The decoder mirrors them.
    dropout : float
        Dropout probability after each non-bottleneck hidden layer (0 disables).
    """

    def __init__(
        self, n_features: int, hidden: Sequence[int] = DEFAULT_HIDDEN, dropout: float = DEFAULT_DROPOUT
    ) -> None:
        super().__init__()
        if n_features < 1 or not hidden or any(h < 1 for h in hidden):
            raise ValueError("n_features and every hidden width must be positive, hidden non-empty")
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        self.n_features = int(n_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)

        enc: list[nn.Module] = []
        width = self.n_features
        for i, h in enumerate(self.hidden):
            enc += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0 and i < len(self.hidden) - 1:
                enc.append(FastDropout(dropout))
            width = h
        dec: list[nn.Module] = []
        for h in reversed(self.hidden[:-1]):
            dec += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                dec.append(FastDropout(dropout))
            width = h
        dec += [nn.Linear(width, self.n_features), nn.Tanh()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Autoencoder(nn.Module):
    """``members`` independently initialised :class:`MirrorAutoencoder` s that all reconstruct the input.

    ``forward`` returns the members' reconstructions side by side, shape (rows, members * n_features); the
    residual subtracts the input from each (:func:`iotad.core.scoring.residual`), so the residual statistics and
    the anomaly score (the mean over all of them, :class:`iotad.core.preprocessing.ResidualScale`) are the
    average of the members' scores. Training minimises the members' mean loss; they share no parameters,
    so each learns as if alone (Adam is per parameter). Averaging them cancels what one member happens to
    reconstruct from its random initialisation (Kitsune, Mirsky et al., NDSS 2018, also scores with an
    ensemble of small autoencoders). FedAvg averages each member with itself: the weights are the members'
    ``state_dict`` arrays in turn.

    Parameters
    ----------
    n_features : int
        Input width.
    hidden, dropout
        Shape of every member (see :class:`MirrorAutoencoder`).
    members : int
        Ensemble size; 1 is a single autoencoder.
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        members: int = DEFAULT_MEMBERS,
    ) -> None:
        super().__init__()
        if members < 1:
            raise ValueError("members must be >= 1")
        self.nets = nn.ModuleList(MirrorAutoencoder(n_features, hidden, dropout) for _ in range(members))
        self.n_features = int(n_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.members = int(members)

    @property
    def n_outputs(self) -> int:
        """Width of :meth:`forward`: ``members * n_features``."""
        return self.members * self.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members == 1:
            return self.nets[0](x)
        return torch.cat([net(x) for net in self.nets], dim=1)

    def hyperparams(self) -> dict[str, Any]:
        """JSON-safe constructor arguments (``Autoencoder(**m.hyperparams())`` rebuilds the shape)."""
        return {"n_features": self.n_features, "hidden": list(self.hidden), "dropout": self.dropout,
                "members": self.members}

    @classmethod
    def for_weights(
        cls, weights: Sequence[Any], n_features: int, hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
    ) -> Autoencoder:
        """The model whose ``state_dict`` arrays are ``weights`` (the member count follows from them)."""
        return cls(n_features, hidden, dropout, members=model_members(weights, n_features, hidden))
