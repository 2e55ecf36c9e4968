"""A submitted run: ``flwr run --stream``, its status as the SuperLink reports it, and how it ended."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotad.deploy.flower import flower_bin, list_runs, stop_run, write_run_config
from iotad.deploy.processes import DeployError, ManagedProcess, ProcessRegistry

# Run statuses as `flwr ls` prints them; ours for outcomes the SuperLink cannot report.
STATUS_COMPLETED = "finished:completed"


STATUS_FAILED = "finished:failed"


STATUS_STOPPED = "finished:stopped"


STATUS_LOST = "lost"  # the stream broke and the SuperLink cannot be asked (it died): resubmit


STATUS_TIMEOUT = "timeout"  # our deadline passed; the run was asked to stop


STATUS_REJECTED = "rejected"  # `flwr run` did not get a run id


_RUN_ID = re.compile(r"Successfully started run (\d+)")


@dataclass
class RunResult:
    """Outcome of one submitted run."""

    run_id: int | None
    status: str  # a `flwr ls` status, or lost / timeout / rejected
    details: str
    seconds: float
    log_path: Path
    stream_returncode: int | None

    @property
    def succeeded(self) -> bool:
        return self.status == STATUS_COMPLETED

    @property
    def resubmittable(self) -> bool:
        """Lost with the SuperLink (or failed by it): a supervisor may resubmit from a checkpoint."""
        return self.status in (STATUS_LOST, STATUS_FAILED)


class RunHandle:
    """A run submitted with ``flwr run <app> <connection> --stream``, its log streamed to a file."""

    def __init__(self, proc: ManagedProcess, flwr_home: Path, connection: str,
                 superlink: ManagedProcess | None = None) -> None:
        self.proc = proc
        self.flwr_home = flwr_home
        self.connection = connection
        self.superlink = superlink  # the SuperLink process the run was submitted to, when we started it
        self._run_id: int | None = None

    @property
    def run_id(self) -> int | None:
        """Parsed from the stream log once ``flwr run`` printed it."""
        if self._run_id is None and (match := _RUN_ID.search(self.proc.log_text())):
            self._run_id = int(match.group(1))
        return self._run_id

    def status(self) -> tuple[str, str] | None:
        """(status, details) from ``flwr ls``, or None when the SuperLink cannot be asked."""
        if self.run_id is None:
            return None
        try:
            runs = list_runs(self.flwr_home, self.connection, self.run_id, timeout=30)
        except (DeployError, subprocess.TimeoutExpired):
            return None
        return (runs[0]["status"], str(runs[0].get("status-details", ""))) if runs else None

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> RunResult:
        """Block until the run ends or ``timeout`` s pass.

        The stream ends when the SuperLink reports the run finished (exit 0) or when the SuperLink goes
        away (exit 1): the exit code of ``flwr run --stream`` does not tell success, so the status is
        read from ``flwr ls``. On timeout the run is stopped (``flwr stop``) and the client killed.
        """
        t0 = self.proc.started_at
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.proc.alive():
            if deadline is not None and time.monotonic() >= deadline:
                if self.run_id is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        stop_run(self.flwr_home, self.connection, self.run_id, timeout=30)
                rc = self.proc.stop(5.0)
                return RunResult(
                    self.run_id, STATUS_TIMEOUT, f"no end after {timeout:.0f}s", time.monotonic() - t0,
                    self.proc.log_path, rc,
                )  # fmt: skip
            time.sleep(poll)
        rc = self.proc.poll()
        if self.run_id is None:
            tail = self.proc.log_text()[-500:].strip()
            return RunResult(None, STATUS_REJECTED, tail, time.monotonic() - t0, self.proc.log_path, rc)
        status = self.status()
        if status is None:
            return RunResult(
                self.run_id, STATUS_LOST, "stream broke and the SuperLink does not answer",
                time.monotonic() - t0, self.proc.log_path, rc,
            )  # fmt: skip
        if not status[0].startswith("finished") and self.superlink is not None and self.superlink.alive():
            # Only the log stream broke (seen: the SuperLink's sqlite "database is locked" under heavy load);
            # the SuperLink that runs the run is the same process: follow the run by its status instead.
            status = self._follow(deadline)
            if status is None or status[0] == STATUS_TIMEOUT:
                reason = "stream broke and the SuperLink stopped answering" if status is None else status[1]
                return RunResult(self.run_id, STATUS_LOST if status is None else STATUS_TIMEOUT, reason,
                                 time.monotonic() - t0, self.proc.log_path, rc)
        if not status[0].startswith("finished"):
            # The stream broke but the SuperLink answers (e.g. it was restarted): the run is gone with
            # the old SuperLink process even if its status has not flipped to finished:failed yet.
            return RunResult(
                self.run_id, STATUS_LOST, f"stream ended while status={status[0]}",
                time.monotonic() - t0, self.proc.log_path, rc,
            )  # fmt: skip
        return RunResult(self.run_id, status[0], status[1], time.monotonic() - t0, self.proc.log_path, rc)


    def _follow(self, deadline: float | None, poll: float = 5.0) -> tuple[str, str] | None:
        """Poll the run's status until it is finished, the SuperLink dies (None) or the deadline passes."""
        assert self.run_id is not None and self.superlink is not None
        while self.superlink.alive():
            if deadline is not None and time.monotonic() >= deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stop_run(self.flwr_home, self.connection, self.run_id, timeout=30)
                return STATUS_TIMEOUT, "no end (followed by status after the stream broke)"
            status = self.status()
            if status is not None and status[0].startswith("finished"):
                return status
            time.sleep(poll)
        return None


def submit_run(
    registry: ProcessRegistry,
    *,
    app_dir: Path,
    flwr_home: Path,
    connection: str,
    log_path: Path,
    run_config: Mapping[str, Any] | None = None,
    name: str = "flwr-run",
    superlink: ManagedProcess | None = None,
) -> RunHandle:
    """Start ``flwr run <app_dir> <connection> --stream [--run-config FILE.toml]`` in the background.

    Overrides go through a TOML file (typed values, no shell quoting); each key must exist in the
    app's ``[tool.flwr.app.config]``. Call again to resubmit (e.g. from a checkpoint with the
    remaining rounds); each call is a new run id.
    """
    argv = [flower_bin("flwr"), "run", str(Path(app_dir).resolve()), connection, "--stream"]
    if run_config:
        cfg = write_run_config(log_path.with_name(log_path.stem + "-run-config.toml"), run_config)
        argv += ["--run-config", str(cfg)]
    env = {"FLWR_HOME": str(flwr_home), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    proc = registry.spawn(name, argv, log_path, env=env, cwd=Path(app_dir).resolve())
    return RunHandle(proc, flwr_home, connection, superlink)
