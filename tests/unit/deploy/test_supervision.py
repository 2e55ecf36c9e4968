"""Supervision of what Flower 1.39 does not restart: a SuperExec that died under a live SuperNode or SuperLink,
and a run whose log stream broke while the same SuperLink still runs it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from iotad.deploy import runs
from iotad.deploy.processes import ManagedProcess, ProcessRegistry

# A parent that starts a child whose command line names flower-superexec, then waits.
_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "flower-superexec"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _child_pid(proc: ManagedProcess) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        last = proc.log_text().rstrip("\n").rsplit("\n", 1)[-1].strip()
        if last.isdigit():
            return int(last)
        time.sleep(0.05)
    raise AssertionError(proc.log_text())


def test_a_dead_superexec_under_a_live_parent_is_seen(tmp_path: Path) -> None:
    with ProcessRegistry() as reg:
        parent = reg.spawn("supernode", [sys.executable, "-c", _PARENT], tmp_path / "parent.log")
        child = _child_pid(parent)
        assert not parent.lost_superexec(grace=0)
        assert parent.lost_superexec(grace=3600) is False  # within the start-up grace: not judged yet
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not parent.lost_superexec(grace=0):  # a zombie child is not a live SuperExec
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert parent.alive()
        parent.stop(5)
        assert not parent.lost_superexec(grace=0)  # a dead parent is the ordinary case, not this one


class _Handle(runs.RunHandle):
    def __init__(self, proc: ManagedProcess, superlink: ManagedProcess, statuses: list[tuple[str, str]]) -> None:
        super().__init__(proc, Path("."), "local", superlink)
        self._run_id = 7
        self.statuses = statuses

    def status(self) -> tuple[str, str] | None:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


@pytest.fixture()
def two_processes(tmp_path: Path) -> tuple[ProcessRegistry, ManagedProcess, ManagedProcess]:
    reg = ProcessRegistry()
    stream = reg.spawn("flwr-run", [sys.executable, "-c", "pass"], tmp_path / "run.log")
    stream.wait(20)
    superlink = reg.spawn("superlink", [sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "sl.log")
    return reg, stream, superlink


def test_a_broken_stream_is_followed_while_the_same_superlink_runs_the_run(
        two_processes: tuple[ProcessRegistry, ManagedProcess, ManagedProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    reg, stream, superlink = two_processes
    monkeypatch.setattr(time, "sleep", lambda s: None)
    handle = _Handle(stream, superlink, [("running", ""), ("running", ""), ("finished:completed", "")])
    try:
        result = handle.wait(timeout=60)
    finally:
        reg.stop_all(timeout=5)
    assert (result.status, result.run_id) == ("finished:completed", 7)


def test_a_broken_stream_with_the_superlink_gone_is_lost(
        two_processes: tuple[ProcessRegistry, ManagedProcess, ManagedProcess]) -> None:
    reg, stream, superlink = two_processes
    superlink.stop(5)
    handle = _Handle(stream, superlink, [("running", "")])
    try:
        result = handle.wait(timeout=60)
    finally:
        reg.stop_all(timeout=5)
    assert result.status == runs.STATUS_LOST and result.resubmittable
