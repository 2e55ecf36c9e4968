"""Fast local training and scoring for the autoencoder (pure PyTorch; no Flower).

Speed comes from keeping the whole (already scaled) data set as one tensor, shuffling with one
``randperm`` per epoch, large batches, and a single host sync per epoch: the loss is accumulated on a
tensor instead of calling ``.item()`` per batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

#: Batch used for scoring; memory is ~batch * widest layer * 4 bytes, a few MB.
SCORE_BATCH = 8192


@dataclass
class TrainConfig:
    """Local training settings.

    Parameters
    ----------
    epochs : int
        Passes over the local data.
    batch_size : int
        Rows per step. Large batches are what make CPU training fast; for a small local data set the batch
        is capped so an epoch still takes at least ``min_steps`` steps.
    lr : float
        Adam learning rate. Measured on synthetic traffic (3 devices x 20k rows, ~25k normal training rows):
        batch 2048 / lr 1e-2 stays undertrained at 10-20 epochs (~110-220 steps, ROC-AUC ~0.55); batch 256 /
        lr 3e-3 converges in ~20 epochs (~2000 steps, a few CPU seconds on one thread).
    weight_decay : float
        Adam L2 penalty.
    proximal_mu : float
        FedProx coefficient: adds ``mu / 2 * ||w - w_global||^2`` when ``global_params`` is given.
    seed : int
        Seeds the shuffling and dropout (a local generator; the global torch RNG is left as it was).
    threads : int
        ``torch.set_num_threads`` for the duration of the call; 0 leaves the process setting alone.
    min_steps : int
        Minimum optimiser steps per epoch (see ``batch_size``).
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0
    threads: int = 0
    min_steps: int = 8


@dataclass
class TrainResult:
    """Outcome of :func:`train_autoencoder` (``epoch_losses``: mean per-element MSE of each epoch)."""

    epoch_losses: list[float] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set ``torch.set_num_threads(n)``; ``n <= 0`` changes nothing."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def effective_batch_size(n_rows: int, cfg: TrainConfig) -> int:
    """Batch actually used: ``cfg.batch_size`` capped so an epoch has ``cfg.min_steps`` steps (min 32)."""
    cap = max(32, -(-n_rows // max(cfg.min_steps, 1)))
    return max(1, min(cfg.batch_size, cap))


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array (rows, features), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def train_autoencoder(
    model: nn.Module,
    x: np.ndarray,
    cfg: TrainConfig,
    *,
    global_params: Sequence[np.ndarray | torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place on scaled features ``x`` (n, n_features) to reconstruct its input.

    Parameters
    ----------
    model : nn.Module
        The autoencoder (left in train mode).
    x : np.ndarray
        Scaled float features; rows are shuffled each epoch.
    cfg : TrainConfig
        Settings.
    global_params : sequence of arrays, optional
        Global weights in ``state_dict`` order, for the FedProx term (ignored when ``proximal_mu == 0``).

    Returns
    -------
    TrainResult
        Mean MSE per epoch, rows processed (epochs * n) and wall seconds.
    """
    xt = _as_tensor(x)
    n = xt.shape[0]
    if n == 0:
        raise ValueError("no training rows")
    if cfg.epochs < 0:
        raise ValueError("epochs must be >= 0")
    params = list(model.parameters())
    prox: list[tuple[torch.Tensor, torch.Tensor]] = []
    if cfg.proximal_mu > 0 and global_params is not None:
        named = dict(model.named_parameters())
        keys = list(model.state_dict().keys())
        if len(keys) != len(global_params):
            raise ValueError(f"global_params has {len(global_params)} arrays, model state has {len(keys)}")
        for key, g in zip(keys, global_params, strict=True):
            if key in named:
                gt = torch.as_tensor(np.asarray(g) if not isinstance(g, torch.Tensor) else g)
                prox.append((named[key], gt.detach().to(named[key].dtype).reshape(named[key].shape)))
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = effective_batch_size(n, cfg)
    half_mu = cfg.proximal_mu / 2.0
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # dropout masks; fork_rng restores the caller's RNG afterwards
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros((), dtype=torch.float64)
            for s in range(0, n, bs):
                xb = xt.index_select(0, perm[s : s + bs])
                loss = torch.mean((model(xb) - xb) ** 2)
                obj = loss
                if prox:
                    obj = loss + half_mu * sum(torch.sum((p - g) ** 2) for p, g in prox)
                opt.zero_grad(set_to_none=True)
                obj.backward()
                opt.step()
                total += loss.detach() * xb.shape[0]
            result.epoch_losses.append(float(total) / n)  # the one host sync of the epoch
            result.samples += n
    result.seconds = time.perf_counter() - start
    return result


def reconstruction_errors(
    model: nn.Module,
    x: np.ndarray,
    batch_size: int = SCORE_BATCH,
    *,
    feature_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Per-row reconstruction error (float64, shape (n,)); eval mode, no autograd.

    Without ``feature_weights``: the mean squared error over features. With them (shape (n_features,)):
    ``sum_j feature_weights[j] * residual_j ** 2``, e.g. :attr:`iotad.preprocessing.ResidualScale.weights`
    for a mean squared z-score.
    """
    xt = _as_tensor(x)
    w: torch.Tensor | None = None
    if feature_weights is not None:
        w = torch.as_tensor(np.asarray(feature_weights, dtype=np.float32))
        if w.shape != (xt.shape[1],):
            raise ValueError(f"feature_weights has shape {tuple(w.shape)}, expected ({xt.shape[1]},)")
    out = np.empty(xt.shape[0], dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, xt.shape[0], batch_size):
                xb = xt[s : s + batch_size]
                sq = (model(xb) - xb) ** 2
                err = torch.mean(sq, dim=1) if w is None else sq @ w
                out[s : s + xb.shape[0]] = err.double().numpy()
    finally:
        model.train(was_training)
    return out


def residual_sumsq(model: nn.Module, x: np.ndarray, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """Per-feature sum over rows of the squared reconstruction residual (float64, shape (n_features,)).

    The aggregate behind :class:`iotad.preprocessing.ResidualScale`: ``ResidualScale(len(x), sums)``.
    """
    xt = _as_tensor(x)
    total = torch.zeros(xt.shape[1], dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, xt.shape[0], batch_size):
                xb = xt[s : s + batch_size]
                total += torch.sum((model(xb) - xb).double() ** 2, dim=0)
    finally:
        model.train(was_training)
    return total.numpy()


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Model state as numpy arrays (copies) in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays in ``state_dict`` order; shapes must match exactly."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} arrays, got {len(weights)}")
    new = {}
    for (key, cur), w in zip(state.items(), weights, strict=True):
        arr = np.asarray(w)
        if tuple(arr.shape) != tuple(cur.shape):
            raise ValueError(f"{key}: expected shape {tuple(cur.shape)}, got {arr.shape}")
        new[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(cur.dtype)
    model.load_state_dict(new, strict=True)
