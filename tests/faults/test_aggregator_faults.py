"""Fault matrix, the aggregator dies twice in one run: SIGKILL of every aggregator process (the launcher, the
SuperLink, its SuperExec and the ServerApp), once while round 2 trains and once while round 3 calibrates.
Each time the test starts the aggregator again on the same state directory and ports, which is what the
container's restart policy does. The devices are separate ``iotad device`` launchers and are never restarted.

What must hold: each restart resumes from the last checkpoint; rounds 1, 2 and 3 each complete exactly once
(0 completed rounds lost); the final weights, threshold and metrics are bit-identical to those of an
uninterrupted run with the same seed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from iotad.data.synthetic import write_synthetic
from iotad.deploy.certs import generate_certs
from iotad.deploy.processes import free_port, pids_with_env
from iotad.fl.checkpoint import CheckpointStore
from tests.integration.test_local_federation import MARK_ENV, sample, scrape

pytestmark = [pytest.mark.faults, pytest.mark.integration]

DEVICES = ("device-0", "device-1")
ROUNDS = 3
ROWS = 900


@dataclass
class Federation:
    """One aggregator launcher and two device launchers on 127.0.0.1, each process marked for the kill."""

    root: Path
    data: Path
    certs: Path
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    aggregator_mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    devices_mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    boots: int = 0

    @property
    def state(self) -> Path:
        return self.root / "aggregator"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _spawn(self, argv: list[str], log: Path, mark: str) -> None:
        env = {**os.environ, MARK_ENV: mark, "PYTHONUNBUFFERED": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)

    def start_aggregator(self) -> None:
        self.boots += 1
        self._spawn([
            sys.executable, "-m", "iotad.cli", "-v", "aggregator", "--state-dir", str(self.state),
            "--certs-dir", str(self.certs), "--keys-dir", str(self.certs / "devices"),
            "--fleet-address", f"127.0.0.1:{self.fleet_port}", "--control-port", str(self.control_port),
            "--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1",
            "--rounds", str(ROUNDS), "--min-nodes", str(len(DEVICES)), "--local-epochs", "1",
            "--join-timeout", "180", "--run-timeout", "600",
        ], self.root / "logs" / f"aggregator-boot-{self.boots}.log", self.aggregator_mark)

    def start_devices(self) -> None:
        for name in DEVICES:
            self._spawn([
                sys.executable, "-m", "iotad.cli", "-v", "device", "--state-dir", str(self.root / name),
                "--device-name", name, "--superlink", f"127.0.0.1:{self.fleet_port}",
                "--root-certificates", str(self.certs / "ca.crt"),
                "--private-key", str(self.certs / "devices" / name / "node_key"),
                "--data-path", str(self.data / name / "traffic.csv"),
                "--supernode-port", str(free_port()), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(free_port()), "--rate", "50",
            ], self.root / "logs" / f"{name}.log", self.devices_mark)

    def kill_aggregator(self) -> int:
        """SIGKILL every aggregator process at once (a power cut, or ``docker kill``); how many there were."""
        pids = pids_with_env(MARK_ENV, self.aggregator_mark)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pids_with_env(MARK_ENV, self.aggregator_mark) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pids_with_env(MARK_ENV, self.aggregator_mark), "aggregator processes survived SIGKILL"
        return len(pids)

    def kill_all(self) -> None:
        for mark in (self.aggregator_mark, self.devices_mark):
            for pid in pids_with_env(MARK_ENV, mark):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def latest_round(self) -> int:
        try:
            return int(json.loads((self.state / "checkpoints" / "latest.json").read_text())["round"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    def status(self) -> dict[str, object]:
        try:
            return dict(json.loads((self.state / "aggregator-status.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def in_phase(self, server_round: int, phase: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                s = scrape(self.metrics)
            except OSError:
                return False
            return (sample(s, "iotad_fl_current_round") == server_round
                    and sample(s, "iotad_fl_round_phase_state", phase=phase) == 1)

        return check

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(poll)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted((self.root / "logs").glob("*.log")))
        pytest.fail(f"no {what} after {timeout:.0f} s\n{logs}")

    def wait_completed(self, timeout: float) -> None:
        self.wait_for("end of training", lambda: self.status().get("state") in ("completed", "failed"), timeout)
        assert self.status()["state"] == "completed", self.status()


@contextlib.contextmanager
def federation(root: Path, data: Path, certs: Path) -> Iterator[Federation]:
    fed = Federation(root, data, certs)
    try:
        fed.start_aggregator()
        # A device whose key is not registered yet is refused and exits (compose restarts it): start them after.
        fed.wait_for("device keys registered", lambda: fed.status().get("state") == "waiting", timeout=120)
        fed.start_devices()
        yield fed
    finally:
        fed.kill_all()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("aggregator-faults")
    write_synthetic(root / "data", len(DEVICES), ROWS, 0)
    generate_certs(root / "certs", devices=DEVICES)
    return root / "data", root / "certs"


def _final(state: Path) -> tuple[list[np.ndarray], float, dict[str, object]]:
    store = CheckpointStore(state / "checkpoints")
    last = store.latest()
    assert last is not None and last.round == ROUNDS
    return last.weights, last.threshold, store.history()[-1].metrics


def test_aggregator_killed_during_train_and_during_calibrate_loses_no_round(
        tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    data, certs = inputs
    with federation(tmp_path / "uninterrupted", data, certs) as ref:
        ref.wait_completed(timeout=600)
    expected = _final(ref.state)

    with federation(tmp_path / "killed", data, certs) as fed:
        recovered: list[float] = []
        for server_round, phase in ((2, "train"), (3, "calibrate")):
            fed.wait_for(f"round {server_round} {phase}", fed.in_phase(server_round, phase), timeout=300, poll=0.1)
            killed = fed.kill_aggregator()
            killed_at = time.time()
            assert fed.latest_round() == server_round - 1, f"round {server_round} finished before the kill"
            print(f"\nround {server_round}, {phase}: {killed} aggregator processes killed")
            fed.start_aggregator()
            t0 = time.monotonic()
            fed.wait_for(f"round {server_round} checkpoint after the restart",
                         lambda r=server_round: fed.latest_round() >= r, timeout=300)
            recovered.append(time.monotonic() - t0)
            history = CheckpointStore(fed.state / "checkpoints").history()
            assert history[-1].round == server_round and history[-1].finished_at > killed_at
        fed.wait_completed(timeout=300)
        print("restart -> the interrupted round checkpointed in " + ", ".join(f"{s:.0f} s" for s in recovered))

        history = CheckpointStore(fed.state / "checkpoints").history()
        assert [r.round for r in history] == [1, 2, 3]  # each round completed exactly once, none lost
        assert all(r.devices_participating == len(DEVICES) for r in history)
        status = fed.status()
        attempts = status["attempts"]
        assert isinstance(attempts, list) and len(attempts) == 1  # this boot's one run, resumed from round 2
        assert (attempts[0]["reason"], attempts[0]["resume_from_round"]) == ("launcher_restart", 2)
        agg = scrape(fed.metrics)
        assert sample(agg, "iotad_fl_completed_rounds_total") == 3  # 2 from the checkpoint + 1 trained
        assert sample(agg, "iotad_fl_resumed_runs_total", reason="launcher_restart") == 1
        assert sample(agg, "iotad_fl_round_phase_state", phase="done") == 1

    weights, threshold, metrics = _final(fed.state)
    ref_weights, ref_threshold, ref_metrics = expected
    assert len(weights) == len(ref_weights)
    assert all(np.array_equal(a, b) for a, b in zip(weights, ref_weights, strict=True)), "weights differ"
    assert threshold == ref_threshold
    assert metrics == ref_metrics
