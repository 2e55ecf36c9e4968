"""Scoring with a trained autoencoder: per-row reconstruction errors and residuals, in batches, without gradients."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

#: Batch used for scoring; memory is ~batch * widest layer * 4 bytes, a few MB.
SCORE_BATCH = 8192


def residual(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``reconstruction - x`` for a model that returns one reconstruction of ``x`` per ensemble member side by
    side (width a multiple of ``x``'s, :class:`iotad.core.model.Autoencoder`)."""
    rows, n = x.shape
    k = reconstruction.shape[1] // n
    if k == 1:
        return reconstruction - x
    # Broadcast the input over the members instead of copying it k times.
    return (reconstruction.view(rows, k, n) - x.unsqueeze(1)).view(rows, k * n)


def _residual_batches(
    model: nn.Module, xt: torch.Tensor, batch_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, reconstruction - input)`` per batch, in eval mode without autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, xt.shape[0], batch_size):
                xb = xt[start : start + batch_size]
                yield start, residual(model(xb), xb)
    finally:
        model.train(was_training)


def reconstruction_errors(
    model: nn.Module,
    x: np.ndarray,
    batch_size: int = SCORE_BATCH,
    *,
    feature_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Per-row reconstruction error (float64, shape (n,)); eval mode, no autograd.

    Without ``feature_weights``: the mean squared error over the residual's columns (features times ensemble
    members). With them (one per column): ``sum_j feature_weights[j] * residual_j ** 2``, e.g.
    :attr:`iotad.core.preprocessing.ResidualScale.weights`
    for a mean squared z-score.
    """
    xt = as_tensor(x)
    w: torch.Tensor | None = None
    if feature_weights is not None:
        w = torch.as_tensor(np.asarray(feature_weights, dtype=np.float32))
        width = _output_width(model, xt.shape[1])
        if w.shape != (width,):
            raise ValueError(f"feature_weights has shape {tuple(w.shape)}, expected ({width},)")
    out = np.empty(xt.shape[0], dtype=np.float64)
    for start, r in _residual_batches(model, xt, batch_size):
        sq = r**2
        err = torch.mean(sq, dim=1) if w is None else sq @ w
        out[start : start + r.shape[0]] = err.double().numpy()
    return out


def _output_width(model: nn.Module, n_features: int) -> int:
    """Residual width: an :class:`iotad.core.model.Autoencoder` says; any other module reconstructs once."""
    return int(getattr(model, "n_outputs", n_features))


def residual_sumsq(model: nn.Module, x: np.ndarray, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """Per-column sum over rows of the squared reconstruction residual (float64, shape (members * n_features,)).

    The aggregate behind :class:`iotad.core.preprocessing.ResidualScale`: ``ResidualScale(len(x), sums)``.
    """
    xt = as_tensor(x)
    total = torch.zeros(_output_width(model, xt.shape[1]), dtype=torch.float64)
    for _, r in _residual_batches(model, xt, batch_size):
        total += torch.sum(r.double() ** 2, dim=0)
    return total.numpy()


def as_tensor(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array (rows, features), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
