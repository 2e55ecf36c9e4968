"""`iotad local-federation` end to end: TLS SuperLink with node auth, 3 SuperNodes + agents, 2 rounds.

The launcher runs as a separate process (it switches prometheus_client to multiprocess mode, which must
not leak into the test process). Every process it starts carries a marker in its environment, so the
test can prove that SIGTERM left nothing behind, and kills leftovers if a test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iotad.deploy.processes import pids_with_env

pytestmark = pytest.mark.integration

MARK_ENV = "IOTAD_TEST_STACK"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries ``IOTAD_TEST_STACK=<mark>``."""
    return pids_with_env(MARK_ENV, mark)


@dataclass
class Stack:
    """A running ``iotad local-federation --keep-running`` and its work directory."""

    workdir: Path
    proc: subprocess.Popen[bytes]
    mark: str
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return (self.workdir / "launcher.out").read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.workdir / "aggregator-status.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def endpoints(self) -> dict[str, Any]:
        return dict(json.loads((self.workdir / "endpoints.json").read_text()))

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"launcher exited ({self.proc.returncode}) waiting for {what}:\n{self.output()[-3000:]}")
            time.sleep(poll)
        pytest.fail(f"no {what} after {timeout:.0f}s:\n{self.output()[-3000:]}\n{self.logs_tail()}")

    def wait_trained(self, timeout: float) -> dict[str, Any]:
        self.wait_for("end of training", lambda: self.status().get("state") in ("completed", "failed"), timeout)
        return self.status()

    def logs_tail(self, n: int = 1500) -> str:
        out = []
        for log in sorted((self.workdir / "logs").glob("*.log")):
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-n:]}")
        return "\n".join(out)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@contextlib.contextmanager
def local_stack(workdir: Path, *args: str) -> Iterator[Stack]:
    """Start ``iotad local-federation ... --keep-running``; on exit SIGTERM it and kill leftovers."""
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK_ENV: mark, "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "iotad.cli", "local-federation", "--workdir", str(workdir), "--keep-running",
            *args]
    with open(workdir / "launcher.out", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    stack = Stack(workdir, proc, mark)
    try:
        yield stack
    finally:
        stack.stop()
        for pid in marked_pids(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def scrape(url: str) -> Samples:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def device_ready(url: str, name: str, model_round: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            s = scrape(url)
        except OSError:
            return False
        return (
            sample(s, "iotad_edge_model_round", device=name) == model_round
            and (sample(s, "iotad_edge_scored_flows_total", device=name) or 0) > 0
            and (sample(s, "iotad_edge_anomalous_flows_total", device=name) or 0) > 0
        )

    return ready


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("local-federation")
    with local_stack(workdir, "--devices", "3", "--rounds", "2", "--rows-per-device", "1500", "--local-epochs", "1",
                     "--rate", "50") as st:
        yield st


def test_two_rounds_over_tls_with_authenticated_devices(stack: Stack) -> None:
    status = stack.wait_trained(timeout=360)
    assert status["state"] == "completed", status
    assert status["completed_rounds"] == 2
    assert [a["status"] for a in status["attempts"]] == ["finished:completed"]
    print(f"\ntrained 2 rounds with 3 devices in {time.monotonic() - stack.started:.0f}s")

    # Every process was started with TLS and node authentication (the refusals are test_tls_auth's job).
    logs = stack.workdir / "logs"
    superlink_cmd = (logs / "superlink.log").read_text().splitlines()[0]
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth", "--database"):
        assert flag in superlink_cmd
    for k in range(3):
        sn_log = (logs / f"supernode-device-{k}.log").read_text()
        assert "--root-certificates" in sn_log.splitlines()[0] and "--auth-supernode-private-key" in sn_log
        assert "--insecure" not in sn_log.splitlines()[0]
        assert "SuperNode ID:" in sn_log


def test_fleet_api_is_grpc_over_tls13(stack: Stack) -> None:
    host, port = stack.endpoints()["fleet"].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(stack.workdir / "certs" / "ca.crt"))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        assert (tls.version(), tls.selected_alpn_protocol()) == ("TLSv1.3", "h2")
        print(f"\nFleet API {host}:{port}: {tls.version()}, ALPN {tls.selected_alpn_protocol()}, "
              f"cipher {tls.cipher()[0]}")


def test_every_device_exports_training_and_detection(stack: Stack) -> None:
    stack.wait_trained(timeout=360)
    devices = stack.endpoints()["devices"]
    assert len(devices) == 3
    for name, url in devices.items():
        stack.wait_for(f"{name} scoring with round 2", device_ready(url, name, 2), timeout=60)
        s = scrape(url)
        loss = sample(s, "iotad_edge_train_loss", device=name)
        assert loss is not None and loss > 0  # written by a ClientApp process, served by the agent
        assert (sample(s, "iotad_edge_train_samples_total", device=name) or 0) > 0
        threshold = sample(s, "iotad_edge_threshold_score", device=name)
        assert threshold is not None and threshold > 0
        assert (sample(s, "iotad_edge_labelled_flows_total", device=name, attack_type="Normal") or 0) > 0
        assert (sample(s, "iotad_edge_detection_latency_seconds_count", device=name) or 0) > 0
        assert sample(s, "iotad_edge_rejected_rows_total", device=name, reason="column_count") == 0


def test_aggregator_exports_rounds_and_quality(stack: Stack) -> None:
    stack.wait_trained(timeout=360)
    s = scrape(stack.endpoints()["aggregator"])
    assert sample(s, "iotad_fl_completed_rounds_total") == 2  # written by the flwr-serverapp process
    assert sample(s, "iotad_fl_current_round") == 2
    f1 = sample(s, "iotad_fl_f1_ratio")
    assert f1 is not None and 0 < f1 <= 1
    assert sample(s, "iotad_fl_started_runs_total") == 1
    assert sample(s, "iotad_fl_round_participating_devices") == 3
    threshold = sample(s, "iotad_fl_threshold_score")
    assert threshold is not None and threshold > 0
    # The devices detect with the global threshold of the last round.
    name, url = next(iter(stack.endpoints()["devices"].items()))
    assert sample(scrape(url), "iotad_edge_threshold_score", device=name) == pytest.approx(threshold)


def test_prometheus_targets_are_written(stack: Stack) -> None:
    targets = stack.workdir / "targets"
    agg = json.loads((targets / "aggregator.json").read_text())
    assert agg[0]["targets"][0].startswith("127.0.0.1:") and "labels" not in agg[0]
    for k in range(3):
        entry = json.loads((targets / f"device-{k}.json").read_text())
        assert entry[0]["labels"] == {"device": f"device-{k}"}
        port = entry[0]["targets"][0].rsplit(":", 1)[1]
        assert stack.endpoints()["devices"][f"device-{k}"] == f"http://127.0.0.1:{port}/metrics"


def test_sigterm_stops_everything(stack: Stack) -> None:
    assert marked_pids(stack.mark)
    t0 = time.monotonic()
    code = stack.stop(timeout=60)
    assert code == 0, stack.output()[-2000:]
    deadline = time.monotonic() + 10
    while marked_pids(stack.mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked_pids(stack.mark) == []
    print(f"\nSIGTERM -> everything stopped in {time.monotonic() - t0:.1f}s")


def test_device_launcher_supervises_supernode_and_agent(tmp_path: Path) -> None:
    """`iotad device`: SuperNode + agent as one group; SIGTERM -> 0 and nothing left; a dead child -> 1."""
    from iotad.data.synthetic import write_synthetic
    from iotad.deploy import generate_certs
    from iotad.deploy.processes import free_port

    certs = generate_certs(tmp_path / "certs", devices=["edge-1"])
    data = write_synthetic(tmp_path / "data", 1, 200, seed=1)[0]

    def launch(state: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
        mark = uuid.uuid4().hex
        argv = [sys.executable, "-m", "iotad.cli", "device", "--state-dir", str(state), "--device-name", "edge-1",
                # Nobody listens there: the SuperNode keeps retrying (no --max-retries), as while the
                # aggregator is down.
                "--superlink", f"127.0.0.1:{free_port()}", "--root-certificates", str(certs.ca_cert),
                "--private-key", str(certs.device_private_key("edge-1")), "--data-path", str(data),
                "--supernode-port", str(free_port()), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(free_port()), *extra]
        env = {**os.environ, MARK_ENV: mark}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True), mark

    proc, mark = launch(tmp_path / "state")
    try:
        deadline = time.monotonic() + 60
        while len(marked_pids(mark)) < 3 and time.monotonic() < deadline:  # launcher, SuperNode, agent
            time.sleep(0.2)
        time.sleep(2.0)
        assert proc.poll() is None
        assert (tmp_path / "state" / "logs" / "supernode.log").exists()
        assert (tmp_path / "state" / "metrics").is_dir() and (tmp_path / "state" / "model").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
        assert marked_pids(mark) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    # A SuperNode that gives up (one attempt) takes the device down with a non-zero exit.
    proc, mark = launch(tmp_path / "state2", "--max-retries", "0")
    try:
        assert proc.wait(90) == 1
        time.sleep(1.0)
        assert marked_pids(mark) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in marked_pids(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
