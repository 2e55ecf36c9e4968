"""Fast local training and scoring for the autoencoder (pure PyTorch; no Flower).

Speed comes from keeping the whole (already scaled) data set as one tensor, shuffling it once per epoch
into a reused buffer (``randperm`` + ``index_select(out=)``; batches are then contiguous views), batches of a
few hundred rows, optionally the fused Adam kernel and a cosine learning-rate schedule, and a single host
sync per epoch: the loss is accumulated on a tensor instead of calling ``.item()`` per batch.

At batch >= 256 a step is compute-bound (the GEMMs), so samples/s saturates near batch 2048 (~10x the
per-row ``DataLoader`` loop at batch 32); but detection quality depends on the number of optimiser steps
more than on samples seen, so the fastest way to a given quality is batch 256-512 (see ``TrainConfig``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from iotad.core.model import Autoencoder
from iotad.core.scoring import as_tensor, residual


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
        ``torch.set_num_threads`` for the duration of the call; 0 leaves the process setting alone. The
        default 1 makes training bit-reproducible (same data and seed, same model: multi-threaded
        reductions are not) and measured no slower on 2 shared cores; a device keeps its other core for
        scoring.
    min_steps : int
        Minimum optimiser steps per epoch (see ``batch_size``).
    lr_schedule : str
        ``"constant"`` (default) or ``"cosine"``: linear warm-up over the first ``warmup`` fraction of the
        call's steps, then cosine decay to ``lr * final_lr`` (see :func:`lr_schedule`). The schedule spans one
        :func:`train_autoencoder` call, i.e. one federated round's local epochs. Measured on the synthetic
        traffic above, batch 256 / lr 3e-3 / 20 epochs: cosine ends at a lower loss than constant (~0.008 vs
        ~0.011 mean over 3 inits) with equal or better ROC-AUC/F1. It does not rescue large batches: the loss
        has plateaus that take a number of *steps* to leave, so batch 1024-2048 with lr 1e-2..2e-2 (cosine,
        20-40 epochs) still ends at ROC-AUC ~0.60-0.63.
    warmup : float
        Fraction of the steps spent warming up (cosine only), from ``lr / 10``.
    final_lr : float
        Final learning rate as a fraction of ``lr`` (cosine only).
    fused : bool
        Use the fused CPU Adam kernel (one call per step for all parameters; ~15-40 % faster steps at batch
        256 on one thread), falling back to plain Adam when unavailable. Off by default only so that the
        default settings reproduce earlier runs bit for bit (constant-lr training is chaotic: rounding-level
        differences moved a single centralised run's ROC-AUC between 0.65 and 0.75).
    schedule_part, schedule_parts : int
        This call runs part ``schedule_part`` (0-based) of ``schedule_parts`` equal parts of one learning-rate
        schedule. Federated round ``r`` of ``R`` trains part ``r - 1`` of ``R``, so the warm-up and cosine decay
        span the whole run as in one centralised call; restarting the schedule every round left the local
        models far apart at each aggregation (measured: federated F1 0.40 vs 0.54 with the run-wide schedule,
        mean of 4 seeds, docs/results.md).
    precision : str
        ``"fp32"`` (default), ``"bf16"`` (CPU autocast for the forward pass; master weights, loss and scoring
        stay float32) or ``"auto"`` (bf16 when the CPU has native bf16 support). bf16 only pays off at batch
        >= 1024 (measured 1.6x samples/s at batch 2048 on an AVX512-BF16 CPU, slower at 256), where the
        model stays undertrained anyway, and it lowered quality slightly at batch 256-512.
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 4e-3
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0
    threads: int = 1
    min_steps: int = 8
    lr_schedule: str = "cosine"
    warmup: float = 0.1
    final_lr: float = 0.02
    fused: bool = True
    schedule_part: int = 0
    schedule_parts: int = 1
    precision: str = "fp32"


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
    xt = as_tensor(x)
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
    opt = _adam(params, cfg)
    bs = effective_batch_size(n, cfg)
    steps_per_epoch = -(-n // bs)
    lrs = lr_schedule(cfg, cfg.epochs * steps_per_epoch)
    bf16 = _use_bf16(cfg.precision)
    half_mu = cfg.proximal_mu / 2.0
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    shuffled = torch.empty_like(xt)  # one reused buffer: batches are contiguous views, no per-step copies
    step = 0
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # dropout masks; fork_rng restores the caller's RNG afterwards
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            torch.index_select(xt, 0, torch.randperm(n, generator=gen), out=shuffled)
            total = torch.zeros((), dtype=torch.float64)
            for s in range(0, n, bs):
                xb = shuffled[s : s + bs]
                for group in opt.param_groups:
                    group["lr"] = lrs[step]
                step += 1
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(xb)
                loss = torch.mean(residual(out.float(), xb) ** 2)
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


def lr_schedule(cfg: TrainConfig, total_steps: int) -> list[float]:
    """Learning rate of each of ``total_steps`` optimiser steps of one :func:`train_autoencoder` call.

    ``"constant"``: ``cfg.lr`` throughout. ``"cosine"``: linear warm-up from ``cfg.lr / 10`` over the first
    ``cfg.warmup`` fraction of the steps, then cosine decay to ``cfg.lr * cfg.final_lr``. With
    ``cfg.schedule_parts`` > 1 the schedule spans ``total_steps * schedule_parts`` steps and this call gets
    part ``cfg.schedule_part`` of it.
    """
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r} (expected 'constant' or 'cosine')")
    if not 0.0 <= cfg.warmup < 1.0 or cfg.final_lr < 0.0:
        raise ValueError("warmup must be in [0, 1) and final_lr >= 0")
    if not 0 <= cfg.schedule_part < cfg.schedule_parts:
        raise ValueError(f"schedule_part must be in [0, {cfg.schedule_parts}), got {cfg.schedule_part}")
    if cfg.lr_schedule == "constant" or total_steps <= 0:
        return [float(cfg.lr)] * max(total_steps, 0)
    if cfg.schedule_parts > 1:
        whole = lr_schedule(replace(cfg, schedule_part=0, schedule_parts=1), total_steps * cfg.schedule_parts)
        return whole[cfg.schedule_part * total_steps : (cfg.schedule_part + 1) * total_steps]
    warm = round(cfg.warmup * total_steps)
    out = []
    for i in range(total_steps):
        if i < warm:
            f = 0.1 + 0.9 * (i + 1) / warm
        else:
            t = (i - warm) / max(total_steps - warm - 1, 1)
            f = cfg.final_lr + (1.0 - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        out.append(float(cfg.lr) * f)
    return out


def _adam(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; the fused CPU kernel (one call per step for all parameters) when ``cfg.fused`` and available."""
    if cfg.fused:
        try:
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 matrix support (e.g. AVX512-BF16 / AMX) for oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _use_bf16(precision: str) -> bool:
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if precision == "auto":
        return bf16_supported()
    raise ValueError(f"unknown precision {precision!r} (expected 'fp32', 'bf16' or 'auto')")


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Model state as numpy arrays (copies) in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def seeded_weights(n_features: int, seed: int, members: int) -> list[np.ndarray]:
    """A new ``Autoencoder``'s weights after ``torch.manual_seed(seed)``: every run's initial model.

    The caller's torch RNG is left as it was.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_weights(Autoencoder(n_features, members=members))


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
