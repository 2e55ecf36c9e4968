"""Fault matrix, disk and state: kills during bundle writes, damaged checkpoints, a full disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from iotad.cli import main
from iotad.core import local_steps
from iotad.core.bundle import BUNDLE_JSON, WEIGHTS_NPZ
from iotad.core.bundle_read import read_bundle
from iotad.core.evaluation import ClassHistograms
from iotad.core.preprocessing import FeatureStats, Scaler
from iotad.data.device import load_device_splits
from iotad.data.schema import N_FEATURES
from iotad.data.synthetic import write_synthetic
from iotad.edge.agent import Agent
from iotad.edge.reload import load_numpy_detector
from iotad.edge.sources import ReplaySource
from iotad.fl.checkpoint import Checkpoint, CheckpointError, CheckpointStore, RoundRecord
from iotad.telemetry import device as tdev
from iotad.telemetry import exporter as texp

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _weights(seed: int) -> tuple[list[np.ndarray], Scaler]:
    import torch

    from iotad.core.model import Autoencoder
    from iotad.core.train import get_weights

    torch.manual_seed(seed)
    rows = np.random.default_rng(seed).lognormal(1.0, 1.0, size=(100, N_FEATURES)).astype(np.float32)
    return get_weights(Autoencoder(N_FEATURES, members=1)), Scaler.from_stats(FeatureStats.of(rows))


def _record(server_round: int) -> RoundRecord:
    return RoundRecord(server_round, 0.1, 3, 0, {}, 0.5 + server_round, {}, 1.0, 100)


def _store_of_three_rounds(root: Path) -> CheckpointStore:
    store = CheckpointStore(root)
    history: list[RoundRecord] = []
    for r in (1, 2, 3):
        weights, scaler = _weights(r)
        history.append(_record(r))
        store.save(Checkpoint(r, weights, scaler, 0.5 + r, 0.99), history, ClassHistograms())
    return store


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "weights truncated": lambda d: _truncate(d / WEIGHTS_NPZ),
    "weights byte flipped": lambda d: _flip(d / WEIGHTS_NPZ),
    "weights missing": lambda d: (d / WEIGHTS_NPZ).unlink(),
    "bundle.json garbage": lambda d: (d / BUNDLE_JSON).write_bytes(b"\x00{not json"),
    "bundle.json truncated": lambda d: _truncate(d / BUNDLE_JSON),
    "bundle.json of another round": lambda d: (d / BUNDLE_JSON).write_text(
        (d / BUNDLE_JSON).read_text().replace('"round": 3', '"round": 7')),
    "round folder deleted": shutil.rmtree,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_falls_back_to_the_previous_good_one(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store_of_three_rounds(tmp_path)
    DAMAGE[damage](store.bundle_dir(3))
    with caplog.at_level(logging.ERROR):
        latest = store.latest()
    assert latest is not None and latest.round == 2 and latest.threshold == 2.5
    assert [w.tobytes() for w in latest.weights] == [w.tobytes() for w in _weights(2)[0]]
    assert [r.round for r in store.history(up_to=latest.round)] == [1, 2]  # a resume repeats round 3
    assert "round 3" in caplog.text  # said clearly, not silently


def test_an_unreadable_latest_json_uses_the_newest_good_round(tmp_path: Path) -> None:
    store = _store_of_three_rounds(tmp_path)
    (tmp_path / "latest.json").write_text('{"round": ')
    latest = store.latest()
    assert latest is not None and latest.round == 3


def test_no_readable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    store = _store_of_three_rounds(tmp_path)
    for r in (1, 2, 3):
        _flip(store.bundle_dir(r) / WEIGHTS_NPZ)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint.*round 3.*round 2.*round 1.*resume = false"):
        store.latest()


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from iotad.core.bundle import BundleError, bundle_from_weights, save_bundle
    from iotad.core.bundle_read import read_bundle
    from iotad.core.shapes import DEFAULT_DROPOUT, DEFAULT_HIDDEN, expected_shapes
    from iotad.core.preprocessing import Scaler
    from iotad.data.schema import FEATURE_NAMES

    target, n = sys.argv[1], len(FEATURE_NAMES)
    shapes = expected_shapes(n, DEFAULT_HIDDEN)
    scaler = Scaler(np.zeros(n, np.float32), np.ones(n, np.float32))
    try:  # carry on from the bundle a killed writer left
        first = read_bundle(target).round + 1
    except BundleError:  # none yet
        first = 1
    for r in range(first, 1_000_000):
        # Every array filled with the round number: a torn bundle would mix two rounds.
        weights = [np.full(s, r, dtype=np.float32) for s in shapes]
        save_bundle(target, bundle_from_weights(weights, scaler, float(r), hidden=DEFAULT_HIDDEN,
                                                dropout=DEFAULT_DROPOUT, round=r, feature_names=FEATURE_NAMES))
        print(r, flush=True)
""")


def test_a_kill_during_a_bundle_write_never_leaves_a_torn_bundle(tmp_path: Path) -> None:
    """SIGKILL of a process rewriting the bundle, 8 times at random moments: what is left always reads
    whole, as one round, and the agent's loader takes it."""
    target = tmp_path / "model"
    rng = np.random.default_rng(0)
    rounds_seen = []
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # one bundle written at least
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        b = read_bundle(target)
        assert b.threshold == b.round and {float(a.flat[0]) for a in b.arrays} == {float(b.round)}
        assert all((a == b.round).all() for a in b.arrays)
        load_numpy_detector(target)
        rounds_seen.append(b.round)
    print(f"\nrounds left by the kills: {rounds_seen}")
    assert rounds_seen == sorted(rounds_seen) and rounds_seen[-1] >= 8  # every writer wrote, none went back


@pytest.fixture(scope="module")
def tiny_device(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full-disk")
    write_synthetic(root / "D", 1, 800, seed=2)
    assert main(["centralized", "--data", str(root / "D"), "--epochs", "1", "--members", "1",
                 "--out", str(root / "C")]) == 0
    return root


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root, as CI and the containers' build run): filled by the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


def test_a_full_disk_stops_the_bundle_write_clearly_and_the_agent_keeps_scoring(
    tiny_device: Path, full_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = full_disk / "model"
    shutil.copytree(tiny_device / "C" / "model", model_dir)
    before = read_bundle(model_dir)
    registry = texp.make_registry()
    source = ReplaySource(tiny_device / "D" / "device-0" / "traffic.csv", rate=0, loop=True)
    agent = Agent(source, model_dir, tdev.DeviceTelemetry("full", registry), batch_size=64, poll_interval=0.05)
    thread = threading.Thread(target=agent.run, kwargs={"duration": 30}, daemon=True)
    thread.start()
    try:
        _fill(full_disk)
        # The device's cache cannot be written: training goes on from memory, with a warning.
        with caplog.at_level(logging.WARNING):
            splits = load_device_splits(tiny_device / "D" / "device-0", 0, cache_dir=full_disk / "cache")
        assert len(splits.train) > 0 and "splits cache not written" in caplog.text
        # The round's bundle cannot be written: a clear error, the old bundle untouched, nothing half-written.
        assert before.scaler is not None and before.threshold is not None
        with pytest.raises(OSError, match=r"model bundle of round 9 not written .*No space left on device.*agent "
                                          r"keeps serving"):
            local_steps.save_global_bundle(model_dir, list(before.arrays), before.scaler, before.threshold, 9,
                                           quantile=0.99, residual=before.residual_scale,
                                           feature_names=before.feature_names)
        assert read_bundle(model_dir).round == before.round
        assert [p.name for p in full_disk.rglob("*") if "tmp" in p.name] == []  # no half-written file left
        scored = agent.stats.scored
        time.sleep(0.5)
        assert thread.is_alive() and agent.stats.scored > scored and agent.stats.model_round == before.round
    finally:
        agent.stop()
        thread.join(10)


def test_resume_from_a_damaged_last_checkpoint_repeats_that_round_and_ends_identical(tmp_path: Path) -> None:
    """A federated run whose last checkpoint is damaged resumes from the round before; it redoes the lost
    round and ends with the model of an uninterrupted run of the same seed."""
    write_synthetic(tmp_path / "D", 2, 900, seed=4)
    args = ["simulate", "--data", str(tmp_path / "D"), "--rounds", "3", "--local-epochs", "1", "--members", "1"]
    assert main([*args, "--out", str(tmp_path / "A")]) == 0
    assert main([*args, "--out", str(tmp_path / "B")]) == 0
    store = CheckpointStore(tmp_path / "B" / "checkpoints")
    _flip(store.bundle_dir(3) / WEIGHTS_NPZ)
    before = json.loads((tmp_path / "B" / "checkpoints" / "history.json").read_text())
    from iotad.fl.simulation import simulate

    simulate(tmp_path / "D", 3, tmp_path / "B", local_epochs=1, members=1, extra_config={"resume": True})
    history = json.loads((tmp_path / "B" / "checkpoints" / "history.json").read_text())
    assert [r["round"] for r in history] == [1, 2, 3]
    assert history[:2] == before[:2] and history[2]["finished_at"] > before[2]["finished_at"]  # only 3 re-ran
    a = read_bundle(tmp_path / "A" / "checkpoints" / "round-0003")
    b = read_bundle(store.bundle_dir(3))
    assert [x.tobytes() for x in a.arrays] == [x.tobytes() for x in b.arrays] and a.threshold == b.threshold
    uninterrupted = json.loads((tmp_path / "A" / "checkpoints" / "history.json").read_text())
    assert history[2]["metrics"] == uninterrupted[2]["metrics"]
