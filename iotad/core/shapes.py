"""The autoencoder's hyperparameters and parameter layout (names, shapes, ensemble size), without torch."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

# The default model shape (iotad.core.model.Autoencoder).
DEFAULT_HIDDEN: tuple[int, ...] = (128, 64, 32, 16)


# Measured on synthetic traffic (docs/benchmarks.md, "Ensemble"): averaging 4 members' scores cut the spread
# of F1 between training seeds to a third to a half, at ~3.7x the training and 2-4x the scoring compute.
DEFAULT_MEMBERS = 4


# The seed used 0.2; measured on synthetic traffic it only slows convergence (higher loss and lower ROC-AUC at
# equal epochs), and the bottleneck already regularises.
DEFAULT_DROPOUT = 0.0


def autoencoder_widths(n_features: int, hidden: Sequence[int]) -> list[int]:
    """Layer widths of :class:`iotad.core.model.Autoencoder`, input to output: n, hidden..., mirrored hidden, n."""
    return [n_features, *hidden, *reversed(hidden[:-1]), n_features]


def expected_shapes(n_features: int, hidden: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes of one member's ``state_dict`` arrays, in order: (out, in) weight, then (out,) bias."""
    shapes: list[tuple[int, ...]] = []
    for w_in, w_out in pairwise(autoencoder_widths(n_features, hidden)):
        shapes += [(w_out, w_in), (w_out,)]
    return shapes


def weights_mismatch(weights: Sequence[Any], n_features: int, hidden: Sequence[int], members: int) -> str | None:
    """Why ``weights`` are not the ``state_dict`` of that :class:`~iotad.core.model.Autoencoder`; None if they are."""
    want = expected_shapes(n_features, hidden) * members
    got = [tuple(np.shape(w)) for w in weights]
    if got == want:
        return None
    if len(want) != len(got):
        return f"expected {len(want)} arrays, got {len(got)}"
    i = next(i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
    return f"array {i}: expected shape {want[i]}, got {got[i]}"


def state_dict_names(hidden: Sequence[int], dropout: float, members: int) -> list[str]:
    """The ``state_dict`` keys of ``iotad.core.model.Autoencoder(n, hidden, dropout, members)``, without torch.

    Each member (``nets.<m>``) is an ``encoder`` and a ``decoder`` ``nn.Sequential``: a Linear + activation
    per layer, and with ``dropout > 0`` a parameter-free dropout module after every hidden layer except the
    bottleneck, which shifts the indices. A test checks this against the torch model.
    """
    def linears(prefix: str, n_layers: int, dropout_after: list[bool]) -> list[str]:
        names, index = [], 0
        for layer in range(n_layers):
            names += [f"{prefix}.{index}.weight", f"{prefix}.{index}.bias"]
            index += 3 if dropout > 0 and dropout_after[layer] else 2
        return names

    k = len(hidden)
    encoder = [i < k - 1 for i in range(k)]  # dropout after every encoder layer but the bottleneck
    decoder = [True] * (k - 1) + [False]  # after every decoder layer but the output
    return [name for m in range(members)
            for name in linears(f"nets.{m}.encoder", k, encoder) + linears(f"nets.{m}.decoder", k, decoder)]
