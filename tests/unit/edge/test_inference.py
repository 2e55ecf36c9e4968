"""Torch-free scoring (NumpyDetector) against the torch Detector, the shared bundle reader, and the agent's
torch-free import path."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iotad.core import bundle as bundle_mod
from iotad.core import detector as detector_mod
from iotad.core.bundle import BUNDLE_JSON, WEIGHTS_NPZ, BundleError
from iotad.core.bundle_read import read_bundle
from iotad.core.detector import Detector, detector_from_weights
from iotad.core.model import DEFAULT_HIDDEN, Autoencoder
from iotad.core.scoring import SCORE_BATCH
from iotad.core.shapes import expected_shapes
from iotad.core.train import TrainConfig, get_weights
from iotad.edge import inference
from iotad.edge.inference import NumpyDetector, set_blas_threads

N_FEATURES = 8
NAMES = [f"f{i}" for i in range(N_FEATURES)]
FAST = TrainConfig(epochs=3, batch_size=256, lr=3e-3, seed=0, threads=1)
LOADERS: dict[str, Callable[..., Any]] = {"torch": Detector.load, "numpy": NumpyDetector.load}


def _normal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(3.0, 0.3, size=(n, 1))
    cols = [base * (k + 1) + rng.normal(0, 0.5, size=(n, 1)) for k in range(N_FEATURES - 2)]
    cols += [rng.integers(0, 2, size=(n, 1)), np.full((n, 1), 7.0)]
    return np.hstack(cols).astype(np.float32)


def _mixed(n: int, seed: int) -> np.ndarray:
    """Normal rows, rows with values far outside the training range (clipped by the scaler), negative
    values, zeros and NaN."""
    rng = np.random.default_rng(seed)
    x = _normal(n, seed)
    x[: n // 4] *= rng.choice([1e-3, 1e3, 1e6, -1.0], size=(n // 4, 1)).astype(np.float32)
    x[n // 4 : n // 2, 1] = 4e9
    x[n // 2 : n // 2 + 10] = 0.0
    x[n // 2 + 10, 3] = np.nan
    return x


@pytest.fixture(scope="module")
def fitted() -> Detector:
    det = Detector(N_FEATURES, hidden=(16, 8, 3), dropout=0.0, feature_names=NAMES)
    return det.fit(_normal(3000, 1), _normal(1000, 2), FAST, quantile=0.95)


@pytest.fixture(scope="module")
def bundle_dir(fitted: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    fitted.round = 4
    fitted.metadata = {"source": "unit-test"}
    return fitted.save(tmp_path_factory.mktemp("inference") / "model")


def _assert_same_scores_and_flags(torch_det: Detector, np_det: NumpyDetector, x: np.ndarray) -> None:
    ref, got = torch_det.decision_function(x), np_det.decision_function(x)
    assert got.dtype == np.float64 and got.shape == (len(x),)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)
    assert np_det.threshold == torch_det.threshold
    # Flags may differ only for a score within float32 rounding of the threshold; none is that close here.
    near = np.abs(ref - np_det.threshold) <= 1e-5 * abs(np_det.threshold)  # type: ignore[operator]
    assert not near.any()
    np.testing.assert_array_equal(np_det.predict(x), torch_det.predict(x))
    np.testing.assert_array_equal(np_det.predict_scores(got), torch_det.predict_scores(ref))


def test_numpy_scores_equal_torch_scores(bundle_dir: Path) -> None:
    torch_det, np_det = Detector.load(bundle_dir), NumpyDetector.load(bundle_dir, feature_names=NAMES)
    x = np.vstack([_normal(3000, 5), _mixed(2000, 6)])
    _assert_same_scores_and_flags(torch_det, np_det, x)
    flags = np_det.predict(x)
    assert flags.dtype == np.int8 and 0 < flags.sum() < len(x)  # both classes occur: the comparison bites
    assert np_det.round == 4 and np_det.quantile == 0.95 and np_det.metadata == {"source": "unit-test"}
    assert np_det.n_features == N_FEATURES and np_det.feature_names == NAMES
    assert np_det.residual_scale is not None and np_det.scaler.n_features == N_FEATURES


@pytest.mark.parametrize(("hidden", "members"), [((5,), 1), ((12, 4), 3), (DEFAULT_HIDDEN, 4)])
def test_numpy_matches_torch_without_residual_scale_and_other_shapes(
    fitted: Detector, tmp_path: Path, hidden: tuple[int, ...], members: int
) -> None:
    """Plain MSE scores (a bundle without a residual scale), other depths and ensemble sizes, untrained."""
    assert fitted.scaler is not None
    model = Autoencoder(N_FEATURES, hidden, members=members)
    det = detector_from_weights(get_weights(model), fitted.scaler, 0.05, hidden=hidden)
    d = det.save(tmp_path / "plain")
    np_det = NumpyDetector.load(d)
    assert np_det.residual_scale is None
    x = np.vstack([_normal(500, 7), _mixed(500, 8)])
    ref = Detector.load(d).decision_function(x)
    np.testing.assert_allclose(np_det.decision_function(x), ref, rtol=1e-5, atol=1e-9)


def test_batches_give_the_same_scores(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert inference.SCORE_BATCH == SCORE_BATCH  # the same bounded batch as the torch scorer
    np_det = NumpyDetector.load(bundle_dir)
    x = _mixed(1000, 9)
    whole = np_det.decision_function(x)
    monkeypatch.setattr(inference, "SCORE_BATCH", 37)  # many batches, a short last one
    # Equal up to float32 rounding: the BLAS kernel may sum in another order for another row count.
    np.testing.assert_allclose(np_det.decision_function(x), whole, rtol=1e-6)
    assert np_det.decision_function(x[:0]).shape == (0,)


def test_scoring_checks_the_feature_width(bundle_dir: Path) -> None:
    np_det = NumpyDetector.load(bundle_dir)
    with pytest.raises(ValueError, match=rf"expected features of shape \(rows, {N_FEATURES}\)"):
        np_det.decision_function(np.zeros((3, N_FEATURES - 1), np.float32))


def test_bundle_without_threshold_cannot_predict(fitted: Detector, tmp_path: Path) -> None:
    assert fitted.scaler is not None
    det = detector_from_weights(get_weights(fitted.model), fitted.scaler, None, hidden=(16, 8, 3))
    np_det = NumpyDetector.load(det.save(tmp_path / "m"))
    assert np_det.threshold is None
    with pytest.raises(RuntimeError, match="threshold"):
        np_det.predict(_normal(2, 10))


def test_expected_shapes_follow_the_torch_model() -> None:
    for hidden in [(5,), (12, 4), (16, 8, 3), DEFAULT_HIDDEN]:
        model = Autoencoder(N_FEATURES, hidden, dropout=0.2, members=2)
        torch_shapes = [tuple(v.shape) for v in model.state_dict().values()]
        assert expected_shapes(N_FEATURES, hidden) * 2 == torch_shapes


def test_bundle_names_stay_importable_from_detector() -> None:
    assert detector_mod.BundleError is BundleError
    assert (detector_mod.BUNDLE_JSON, detector_mod.WEIGHTS_NPZ) == (BUNDLE_JSON, WEIGHTS_NPZ)
    assert detector_mod.BUNDLE_FORMAT == bundle_mod.BUNDLE_FORMAT
    assert detector_mod.DEFAULT_QUANTILE == bundle_mod.DEFAULT_QUANTILE


def test_read_bundle_holds_everything_the_detectors_need(bundle_dir: Path, fitted: Detector) -> None:
    b = read_bundle(bundle_dir, feature_names=NAMES, n_features=N_FEATURES)
    assert (b.n_features, b.feature_names, b.hidden, b.dropout) == (N_FEATURES, NAMES, (16, 8, 3), 0.0)
    assert b.threshold == fitted.threshold and b.round == 4 and b.quantile == 0.95
    assert len(b.arrays) == len(get_weights(fitted.model))
    for got, want in zip(b.arrays, get_weights(fitted.model), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(AttributeError):
        b.round = 5  # type: ignore[misc]  # frozen


# -- bundle errors: the same checks and messages through both loaders -----------------------------------


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_load_validates_features(bundle_dir: Path, loader: Callable[..., Any]) -> None:
    with pytest.raises(BundleError, match=f"expects {N_FEATURES} features, the data has 5"):
        loader(bundle_dir, n_features=5)
    with pytest.raises(BundleError, match=f"expects {N_FEATURES} features, the data has {N_FEATURES + 1}"):
        loader(bundle_dir, feature_names=[*NAMES, "extra"])
    with pytest.raises(BundleError, match="feature 2 is 'f2' in the model but 'zz' in the data"):
        loader(bundle_dir, feature_names=[*NAMES[:2], "zz", *NAMES[3:]])


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_load_rejects_missing_or_broken_bundles(
    fitted: Detector, tmp_path: Path, loader: Callable[..., Any]
) -> None:
    with pytest.raises(BundleError, match="no model bundle"):
        loader(tmp_path / "nothing")
    d = fitted.save(tmp_path / "m")
    (d / BUNDLE_JSON).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        loader(d)
    (d / BUNDLE_JSON).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not an iotad model bundle"):
        loader(d)


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_load_checks_the_member_count_and_residual_width(
    fitted: Detector, tmp_path: Path, loader: Callable[..., Any]
) -> None:
    d = fitted.save(tmp_path / "m")
    meta = json.loads((d / BUNDLE_JSON).read_text())
    # A bundle from before ensembles has no member count: one autoencoder, whose weights these are not.
    del meta["model"]["members"]
    (d / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"residual scale has .* columns"):
        loader(d)
    meta["model"]["members"] = 0
    (d / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="members 0"):
        loader(d)


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_load_detects_weights_that_do_not_match_the_json(
    fitted: Detector, tmp_path: Path, loader: Callable[..., Any]
) -> None:
    d = fitted.save(tmp_path / "m")
    np.savez(d / WEIGHTS_NPZ, w000=np.zeros(3))
    with pytest.raises(BundleError, match="kept changing"):
        loader(d, retries=2)


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_load_rejects_weights_that_do_not_fit_the_model(
    fitted: Detector, tmp_path: Path, loader: Callable[..., Any]
) -> None:
    """A consistent bundle (sha256 fine) whose model entry names another shape than its weights."""
    d = fitted.save(tmp_path / "m")
    meta = json.loads((d / BUNDLE_JSON).read_text())
    meta["model"]["hidden"] = [16, 8, 4]
    (d / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="weights do not fit the model"):
        loader(d)
    meta["model"]["hidden"] = []
    (d / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="malformed model entry"):
        loader(d)
    del meta["model"]["hidden"]  # no default architecture is assumed
    (d / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="malformed model entry"):
        loader(d)


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_load_rejects_a_malformed_scaler(fitted: Detector, tmp_path: Path, loader: Callable[..., Any]) -> None:
    d = fitted.save(tmp_path / "m")
    meta = json.loads((d / BUNDLE_JSON).read_text())
    del meta["scaler"]["clip"]
    (d / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="malformed scaler"):
        loader(d)


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_concurrent_reader_never_sees_a_torn_bundle(
    fitted: Detector, tmp_path: Path, loader: Callable[..., Any]
) -> None:
    d = tmp_path / "live"
    fitted.round = 0
    fitted.save(d)
    errors: list[Exception] = []
    rounds_seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                rounds_seen.add(loader(d).round)
            except Exception as e:  # any failure is the bug under test
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for r in range(1, 15):
            fitted.round = r
            fitted.save(d)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert rounds_seen


# -- the agent's path stays torch-free -------------------------------------------------------------------


def test_agent_modules_do_not_import_torch() -> None:
    code = (
        "import sys, iotad.edge.run, iotad.edge.inference, iotad.core.bundle_read, iotad.cli\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_iotad_agent_command_scores_without_torch(bundle_dir: Path, tmp_path: Path) -> None:
    """``iotad agent`` through the CLI entry point: loads a real bundle, scores, stops, and never imports
    torch (checked in the same interpreter after the command returns)."""
    from iotad.core.preprocessing import FeatureStats, Scaler
    from iotad.data.schema import FEATURE_NAMES
    from iotad.data.synthetic import write_synthetic
    from iotad.deploy.processes import free_port

    csv = write_synthetic(tmp_path / "data", 1, 300, seed=2)[0]
    x = np.zeros((1, len(FEATURE_NAMES)))
    scaler = Scaler.from_stats(FeatureStats.of(x))
    model_dir = tmp_path / "model"
    detector_from_weights(get_weights(Autoencoder(len(FEATURE_NAMES))), scaler, 0.01, round=2,
                          feature_names=FEATURE_NAMES).save(model_dir)
    code = f"""
import os, signal, sys, threading
from iotad import cli
threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
rc = cli.main(["agent", "--device", "d", "--model-dir", {str(model_dir)!r}, "--replay", {str(csv)!r},
               "--rate", "0", "--metrics-port", "{free_port()}", "--metrics-dir", {str(tmp_path / "mp")!r}])
assert rc == 0, rc
assert "iotad.edge.inference" in sys.modules and "torch" not in sys.modules, "torch imported"
print("torch-free")
"""
    (tmp_path / "mp").mkdir()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch-free" in out.stdout
    assert "flows scored" in out.stderr and " 0 flows scored" not in out.stderr, out.stderr[-2000:]
    assert "not applied" not in out.stderr  # --threads reached numpy's OpenBLAS


def test_set_blas_threads_reaches_numpys_openblas() -> None:
    libs = set_blas_threads(1)
    assert libs, "numpy's wheels bundle OpenBLAS; it should be found"
    lib = ctypes.CDLL(libs[0])
    getters = [n.replace("_set_", "_get_") for n in inference._OPENBLAS_SETTERS]
    getter = next(getattr(lib, n) for n in getters if hasattr(lib, n))
    try:
        assert getter() == 1
        set_blas_threads(2)
        assert getter() == 2
    finally:
        set_blas_threads(os.cpu_count() or 1)  # OpenBLAS's own default: one thread per CPU
