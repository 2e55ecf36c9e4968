"""Launch, watch and stop the Flower 1.39 deployment-engine processes.

Everything here shells out to the ``flower-superlink``, ``flower-supernode`` and ``flwr`` commands of
the installed flwr 1.39.0 (see docs/flower-notes.md for the facts each choice rests on). The module
knows nothing of the ML; the launcher (``federation.py``) and the container entrypoints build on it.

Process hygiene: every process is started in its own session (its own process group) with an
``IOTAD_DEPLOY_TAG`` environment variable. Stopping signals the whole group, waits a bounded time,
then kills; a final sweep kills any process that still carries the tag. The sweep matters because the
SuperLink starts its ``flower-superexec`` with ``start_new_session=True`` (outside our group), and a
``flwr-serverapp`` whose SuperLink was killed is re-parented to init instead of exiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
TAG_ENV = "IOTAD_DEPLOY_TAG"
# Run statuses as `flwr ls` prints them; ours for outcomes the SuperLink cannot report.
STATUS_COMPLETED = "finished:completed"
STATUS_FAILED = "finished:failed"
STATUS_STOPPED = "finished:stopped"
STATUS_LOST = "lost"  # the stream broke and the SuperLink cannot be asked (it died): resubmit
STATUS_TIMEOUT = "timeout"  # our deadline passed; the run was asked to stop
STATUS_REJECTED = "rejected"  # `flwr run` did not get a run id


class DeployError(RuntimeError):
    """A deployment process failed to start, or a ``flwr`` command failed."""


# --- small helpers --------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def format_config(values: Mapping[str, Any]) -> str:
    """Render a mapping as Flower's ``k=v k2="s"`` string (values in TOML syntax).

    Used for ``--node-config``. Flower's parser splits on whitespace outside quotes and has no
    escapes, so strings holding quotes are refused.
    """
    parts = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"bad config key {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            if '"' in value or "'" in value or "\\" in value or "\n" in value:
                raise ValueError(f"config value for {key!r} may not contain quotes, backslashes or newlines")
            text = f'"{value}"'
        else:
            raise TypeError(f"config value for {key!r} must be bool, int, float or str, not {type(value)}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"run-config values must be bool, int, float or str, not {type(value)}")


def write_run_config(path: Path, values: Mapping[str, Any]) -> Path:
    """Write run-config overrides as a flat TOML file for ``flwr run --run-config FILE.toml``."""
    if path.suffix != ".toml":
        raise ValueError("flwr only reads a run-config file whose name ends in .toml")
    lines = [f'"{key}" = {_toml_value(value)}' for key, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_flwr_config(flwr_home: Path, connection: str, address: str, root_certificates: Path) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one ``[superlink.<connection>]`` (TLS, made the default).

    ``root-certificates`` must be absolute (flwr 1.39 rejects relative paths).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f"default = {json.dumps(connection)}\n\n"
        f"[superlink.{json.dumps(connection)}]\n"
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n",
        encoding="utf-8",
    )
    return path


def flower_bin(name: str) -> str:
    """Path of a Flower console script: next to this interpreter first (venvs), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found (is flwr==1.39.0 installed?)")
    return found


# --- processes ------------------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """One launched process (leader of its own process group) and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Return the exit code, or None if still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group (the process and the children it did not detach)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the group, wait up to ``timeout`` s, then SIGKILL the group. Returns the exit code."""
        if self.alive():
            self.signal_group(sig)
            if self.wait(timeout) is None:
                self.signal_group(signal.SIGKILL)
                self.wait(5.0)
        # Leftovers of the group (children that ignored the signal) go too.
        self.signal_group(signal.SIGKILL)
        return self.popen.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def pids_with_env(name: str, value: str) -> list[int]:
    """PIDs of live processes (not zombies, not this one) whose environment has ``name=value`` (Linux /proc)."""
    needle = f"{name}={value}".encode()
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def tagged_pids(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries ``IOTAD_DEPLOY_TAG=<tag>``."""
    return pids_with_env(TAG_ENV, tag)


class ProcessRegistry:
    """Starts processes with a common tag and stops all of them (and their descendants)."""

    def __init__(self, tag: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex
        self.env = dict(env or {})
        self.processes: list[ManagedProcess] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, stdout+stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **self.env, **(env or {}), TAG_ENV: self.tag}
        # Keep the venv's console scripts (flower-superexec, flwr-clientapp, ...) reachable by name:
        # Flower starts its children through PATH.
        bindir = str(Path(sys.executable).parent)
        if bindir not in full_env.get("PATH", "").split(os.pathsep):
            full_env["PATH"] = bindir + os.pathsep + full_env.get("PATH", "")
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        proc = ManagedProcess(name=name, argv=list(argv), log_path=log_path, popen=popen)
        self.processes.append(proc)
        return proc

    def get(self, name: str) -> ManagedProcess | None:
        """The most recently started process called ``name``."""
        for proc in reversed(self.processes):
            if proc.name == name:
                return proc
        return None

    def stop(self, proc: ManagedProcess, timeout: float = 10.0) -> int | None:
        return proc.stop(timeout)

    def stop_all(self, timeout: float = 10.0, order: Iterable[ManagedProcess] | None = None) -> None:
        """Stop every process (``order`` first, then the rest newest first), then sweep tagged leftovers.

        Bounded: each process gets ``timeout`` s after SIGTERM before SIGKILL.
        """
        first = list(order or [])
        rest = [p for p in reversed(self.processes) if p not in first]
        for proc in first + rest:
            proc.stop(timeout)
        self.sweep()

    def sweep(self, grace: float = 3.0) -> list[int]:
        """SIGTERM, then SIGKILL, every live process carrying this registry's tag. Returns their pids."""
        pids = tagged_pids(self.tag)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in pids if p in set(tagged_pids(self.tag))]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.processes:
            proc.poll()  # reap
        return pids

    def __enter__(self) -> ProcessRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_for_port(port: int, host: str = HOST, timeout: float = 30.0, proc: ManagedProcess | None = None) -> float:
    """Wait until ``host:port`` accepts connections; returns the seconds waited.

    Raises DeployError if ``proc`` exits first or on timeout.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if port_open(port, host, timeout=0.5):
            return time.monotonic() - t0
        if proc is not None and not proc.alive():
            raise DeployError(f"{proc.name} exited ({proc.poll()}) before {host}:{port} opened; see {proc.log_path}")
        time.sleep(0.1)
    raise DeployError(f"{host}:{port} not open after {timeout:.0f}s")


# --- command lines (flwr 1.39.0) ------------------------------------------------------------------


def superlink_argv(
    *,
    ca_cert: Path,
    server_cert: Path,
    server_key: Path,
    database: Path | str,
    fleet_address: str,
    control_port: int,
    control_host: str = HOST,
    supernode_auth: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """``flower-superlink`` with TLS, node authentication and a persistent state database.

    The Control/ServerAppIo HTTPS API stays on ``control_host`` (loopback by default): it can start
    code on every device and must never be published.
    """
    argv = [
        flower_bin("flower-superlink"),
        "--ssl-ca-certfile", str(ca_cert),
        "--ssl-certfile", str(server_cert),
        "--ssl-keyfile", str(server_key),
        "--database", str(database),
        "--fleet-api-address", fleet_address,
        "--host", control_host,
        "--port", str(control_port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if supernode_auth:
        argv.append("--enable-supernode-auth")
    return argv + list(extra)


def supernode_argv(
    *,
    superlink: str,
    root_certificates: Path | None,
    private_key: Path | None,
    port: int,
    node_config: Mapping[str, Any] | None = None,
    host: str = HOST,
    insecure: bool = False,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``flower-supernode`` (grpc-rere, TLS unless ``insecure``) with its own local Runtime API port."""
    argv = [flower_bin("flower-supernode"), "--superlink", superlink]
    if insecure:
        argv.append("--insecure")
    elif root_certificates is not None:
        argv += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        argv += ["--auth-supernode-private-key", str(private_key)]
    if node_config:
        argv += ["--node-config", format_config(node_config)]
    argv += ["--host", host, "--port", str(port)]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    return argv + list(extra)


# --- flwr CLI -------------------------------------------------------------------------------------


def flwr_cli(
    args: Sequence[str], *, flwr_home: Path, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` against ``$FLWR_HOME/config.toml``; never raises on a non-zero exit."""
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    return subprocess.run(
        [flower_bin("flwr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _json_out(proc: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    text = proc.stdout
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if proc.returncode != 0 or not isinstance(data, dict) or not data.get("success", False):
        msg = (proc.stderr.strip() or proc.stdout.strip())[-800:]
        raise DeployError(f"{what} failed (exit {proc.returncode}): {msg}")
    return data


def register_node(
    flwr_home: Path, connection: str, public_key: Path, name: str | None = None, timeout: float = 60.0
) -> int:
    """``flwr supernode register <public_key> <connection> [--name NAME]``; returns the node id.

    The node id is assigned at registration and survives SuperLink restarts (``--database``).
    """
    args = ["supernode", "register", str(public_key), connection, "--format", "json"]
    if name:
        args += ["--name", name]
    data = _json_out(flwr_cli(args, flwr_home=flwr_home, timeout=timeout), f"register {public_key}")
    return int(data["node-id"])


def list_nodes(flwr_home: Path, connection: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """``flwr supernode list --format json``: dicts with ``node-id`` (str) and ``status``
    (registered | online | offline | unregistered)."""
    proc = flwr_cli(["supernode", "list", connection, "--format", "json"], flwr_home=flwr_home, timeout=timeout)
    return list(_json_out(proc, "flwr supernode list")["nodes"])


def list_runs(
    flwr_home: Path, connection: str, run_id: int | None = None, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """``flwr ls --format json``: dicts with ``run-id`` (str), ``status`` (pending | starting | running |
    finished:completed | finished:failed | finished:stopped), ``status-details``, timestamps."""
    args = ["ls", connection, "--format", "json"]
    if run_id is not None:
        args += ["--run-id", str(run_id)]
    return list(_json_out(flwr_cli(args, flwr_home=flwr_home, timeout=timeout), "flwr ls")["runs"])


def stop_run(flwr_home: Path, connection: str, run_id: int, timeout: float = 60.0) -> bool:
    """``flwr stop <run_id>``; True if the SuperLink accepted it."""
    proc = flwr_cli(["stop", str(run_id), connection], flwr_home=flwr_home, timeout=timeout)
    return proc.returncode == 0


# --- runs -----------------------------------------------------------------------------------------

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

    def __init__(self, proc: ManagedProcess, flwr_home: Path, connection: str) -> None:
        self.proc = proc
        self.flwr_home = flwr_home
        self.connection = connection
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
        if not status[0].startswith("finished"):
            # The stream broke but the SuperLink answers (e.g. it was restarted): the run is gone with
            # the old SuperLink process even if its status has not flipped to finished:failed yet.
            return RunResult(
                self.run_id, STATUS_LOST, f"stream ended while status={status[0]}",
                time.monotonic() - t0, self.proc.log_path, rc,
            )  # fmt: skip
        return RunResult(self.run_id, status[0], status[1], time.monotonic() - t0, self.proc.log_path, rc)


def submit_run(
    registry: ProcessRegistry,
    *,
    app_dir: Path,
    flwr_home: Path,
    connection: str,
    log_path: Path,
    run_config: Mapping[str, Any] | None = None,
    name: str = "flwr-run",
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
    return RunHandle(proc, flwr_home, connection)
