"""The ServerApp's initial model is the seeded torch init, and its process never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iotad.core.model import Autoencoder
from iotad.core.train import get_weights
from iotad.data.schema import N_FEATURES
from iotad.fl.server_app import initial_weights


@pytest.mark.parametrize(("seed", "members"), [(0, 4), (7, 1)])
def test_initial_weights_are_the_seeded_torch_init_bit_for_bit(seed: int, members: int) -> None:
    """Published results start from these weights: computed in a child interpreter, they must be the bits of
    the in-process init."""
    torch.manual_seed(seed)
    expected = get_weights(Autoencoder(N_FEATURES, members=members))
    got = initial_weights(seed, members, N_FEATURES)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype == "float32" and g.shape == e.shape and g.tobytes() == e.tobytes()


def test_serverapp_process_does_not_import_torch(tmp_path: Path) -> None:
    """What the ServerApp process does with torch-free code: import the app, get the initial weights (a
    child interpreter imports torch), write a round checkpoint and read it back to resume."""
    code = f"""
import sys
from pathlib import Path

import numpy as np

import iotad.fl.checkpoint
import iotad.fl.server_app
from iotad.fl.checkpoint import Checkpoint, CheckpointStore
from iotad.data.schema import N_FEATURES
from iotad.core.evaluation import ClassHistograms
from iotad.core.preprocessing import FeatureStats, ResidualScale, Scaler

weights = iotad.fl.server_app.initial_weights(0, 2, N_FEATURES)
scaler = Scaler.from_stats(FeatureStats.of(np.ones((4, N_FEATURES))))
residual = ResidualScale(count=4, sumsq=np.ones(2 * N_FEATURES))
store = CheckpointStore(Path({str(tmp_path)!r}))
store.save(Checkpoint(1, weights, scaler, 0.5, 0.99, residual), [], ClassHistograms())
assert store.latest().round == 1
store.save(Checkpoint(2, weights, None, 0.5, 0.99), [], ClassHistograms())  # per-device normalisation
assert store.latest().scaler is None
assert "torch" not in sys.modules, "torch imported"
print("torch-free")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch-free" in out.stdout
