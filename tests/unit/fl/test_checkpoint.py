"""Round checkpoints are written and read without torch, as the bundles the torch detector writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iotad.core import model
from iotad.core.bundle import BUNDLE_JSON, WEIGHTS_NPZ, BundleError, model_members
from iotad.core.detector import Detector
from iotad.core.evaluation import ClassHistograms
from iotad.core.preprocessing import FeatureStats, ResidualScale, Scaler
from iotad.core.shapes import state_dict_names
from iotad.core.train import get_weights, set_weights
from iotad.data.schema import FEATURE_NAMES, N_FEATURES
from iotad.edge.inference import NumpyDetector
from iotad.fl.checkpoint import Checkpoint, CheckpointError, CheckpointStore


def _state(members: int, seed: int = 3) -> tuple[list[np.ndarray], Scaler, ResidualScale, np.ndarray]:
    torch.manual_seed(seed)
    weights = get_weights(model.Autoencoder(N_FEATURES, members=members))
    rng = np.random.default_rng(seed)
    rows = rng.lognormal(2.0, 1.0, size=(200, N_FEATURES)).astype(np.float32)
    scaler = Scaler.from_stats(FeatureStats.of(rows))
    residual = ResidualScale(count=200, sumsq=rng.random(N_FEATURES * members) + 0.5)
    return weights, scaler, residual, rows


def _torch_bundle(directory: Path, weights: list[np.ndarray], scaler: Scaler, residual: ResidualScale | None,
                  threshold: float, quantile: float, server_round: int) -> Detector:
    """The bundle as the torch detector writes it (what checkpoints were before they went torch-free)."""
    det = Detector(N_FEATURES, members=model_members(weights, N_FEATURES, model.DEFAULT_HIDDEN),
                   feature_names=FEATURE_NAMES)
    set_weights(det.model, weights)
    det.model.eval()
    det.scaler, det.residual_scale, det.threshold, det.quantile = scaler, residual, threshold, quantile
    det.round, det.metadata = server_round, {"source": "federated", "normalisation": "global"}
    det.save(directory)
    return det


@pytest.mark.parametrize(("hidden", "dropout", "members"),
                         [((5,), 0.0, 1), ((12, 4), 0.2, 3), ((16, 8, 3), 0.0, 2), (model.DEFAULT_HIDDEN, 0.1, 4)])
def test_state_dict_names_are_the_torch_models(hidden: tuple[int, ...], dropout: float, members: int) -> None:
    net = model.Autoencoder(7, hidden, dropout, members)
    assert state_dict_names(hidden, dropout, members) == list(net.state_dict())


@pytest.mark.parametrize("members", [1, 4])
@pytest.mark.parametrize("float64", [False, True], ids=["float32", "float64"])
def test_checkpoint_bundle_is_the_torch_detectors_bundle(tmp_path: Path, members: int, float64: bool) -> None:
    """Same bundle.json (but the weights' sha256: the .npz zip holds a timestamp) and the same arrays, bit for
    bit; weights aggregated in float64 are stored as float32, as the torch model holds them."""
    weights, scaler, residual, rows = _state(members)
    given = [w.astype(np.float64) * (1 + 1e-9) for w in weights] if float64 else weights
    store = CheckpointStore(tmp_path / "ckpt")
    ours = store.save(Checkpoint(5, given, scaler, 0.75, 0.97, residual, FEATURE_NAMES), [], ClassHistograms())
    assert ours == store.bundle_dir(5)
    det = _torch_bundle(tmp_path / "torch", given, scaler, residual, 0.75, 0.97, 5)

    meta, ref = (json.loads((d / BUNDLE_JSON).read_text()) for d in (ours, tmp_path / "torch"))
    meta["weights"].pop("sha256"), ref["weights"].pop("sha256")
    assert meta == ref and list(meta) == list(ref)
    assert meta["weights"]["names"] == list(det.model.state_dict())  # the torch model's own names
    assert meta["model"] == det.model.hyperparams()
    with np.load(ours / WEIGHTS_NPZ) as a, np.load(tmp_path / "torch" / WEIGHTS_NPZ) as b:
        assert a.files == b.files
        for k in a.files:
            assert a[k].dtype == b[k].dtype == np.float32 and a[k].tobytes() == b[k].tobytes(), k

    # Both loaders read it, and score as the detector it was made from.
    expected = det.decision_function(rows)
    torch_loaded = Detector.load(ours, feature_names=FEATURE_NAMES)
    np.testing.assert_array_equal(torch_loaded.decision_function(rows), expected)
    numpy_loaded = NumpyDetector.load(ours, feature_names=FEATURE_NAMES)
    np.testing.assert_allclose(numpy_loaded.decision_function(rows), expected, rtol=1e-5)
    assert (torch_loaded.round, numpy_loaded.round, numpy_loaded.threshold) == (5, 5, 0.75)


def test_latest_returns_what_was_saved(tmp_path: Path) -> None:
    weights, scaler, residual, _ = _state(4)
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    store.save(Checkpoint(1, weights, scaler, 0.5, 0.99, residual), [], ClassHistograms())
    store.save(Checkpoint(2, weights, scaler, 0.25, 0.95, None), [], ClassHistograms())
    latest = store.latest()
    assert latest is not None
    assert (latest.round, latest.threshold, latest.quantile, latest.residual) == (2, 0.25, 0.95, None)
    assert latest.scaler.to_dict() == scaler.to_dict()
    assert [w.tobytes() for w in latest.weights] == [w.tobytes() for w in weights]
    assert all(w.dtype == np.float32 for w in latest.weights)


def test_checkpoint_rejects_weights_that_do_not_fit(tmp_path: Path) -> None:
    weights, scaler, residual, _ = _state(2)
    store = CheckpointStore(tmp_path)
    with pytest.raises(BundleError, match="whole members"):
        store.save(Checkpoint(1, weights[:-1], scaler, 0.5, 0.99, None), [], ClassHistograms())
    with pytest.raises(BundleError, match="array 2: expected shape"):
        store.save(Checkpoint(1, [weights[0], weights[1], weights[3], weights[2], *weights[4:]], scaler, 0.5, 0.99,
                              None), [], ClassHistograms())
    with pytest.raises(ValueError, match="residual scale has"):
        store.save(Checkpoint(1, weights[:16], scaler, 0.5, 0.99, residual), [], ClassHistograms())
    # A bundle.json whose member count disagrees with its arrays: resuming fails clearly.
    bundle = store.save(Checkpoint(1, weights, scaler, 0.5, 0.99, None), [], ClassHistograms())
    meta = json.loads((bundle / BUNDLE_JSON).read_text())
    meta["model"]["members"] = 1
    (bundle / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"weights do not fit the model: expected 16 arrays, got 32"):
        store.latest()
