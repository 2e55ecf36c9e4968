"""Launch, watch and stop the Flower 1.39 deployment-engine processes.

The processes are the ``flower-superlink``, ``flower-supernode`` and ``flwr`` commands of the installed
flwr 1.39.0; their command lines are built in :mod:`iotad.deploy.flower` (see docs/flower-notes.md for
the facts each choice rests on) and a run's lifecycle is in :mod:`iotad.deploy.runs`. Nothing here knows
the ML; the launcher (``federation.py``) and the container entrypoints build on it.

Process hygiene: every process is started in its own session (its own process group) with an
``IOTAD_DEPLOY_TAG`` environment variable. Stopping signals the whole group, waits a bounded time,
then kills; a final sweep kills any process that still carries the tag. The sweep matters because the
SuperLink starts its ``flower-superexec`` with ``start_new_session=True`` (outside our group), and a
``flwr-serverapp`` whose SuperLink was killed is re-parented to init instead of exiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

HOST = "127.0.0.1"
TAG_ENV = "IOTAD_DEPLOY_TAG"


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

    def lost_child(self, needle: bytes, grace: float = 30.0) -> bool:
        """Alive for more than ``grace`` s, but no live child's command line contains ``needle``."""
        if not self.alive() or time.monotonic() - self.started_at < grace:
            return False
        return not any(needle in cmdline for cmdline in _live_children(self.pid))

    def lost_superexec(self, grace: float = 30.0) -> bool:
        """A SuperLink or SuperNode whose ``flower-superexec`` is gone. The SuperExec exits on any unexpected
        error of the SuperLink (seen: sqlite "database is locked" under heavy load) and flwr 1.39 never starts
        it again, so no ServerApp or ClientApp would ever run: restart the process instead."""
        return self.lost_child(b"flower-superexec", grace)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _live_children(pid: int) -> list[bytes]:
    """Command lines of the live (not zombie) children of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[1]) == pid:
                out.append((entry / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    return out


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
        pipe: bool = False,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, stdout+stderr appended to ``log_path`` (``pipe``: to
        ``popen.stdout`` instead, for the caller to read; ``log_path`` then only names it)."""
        if not pipe:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **self.env, **(env or {}), TAG_ENV: self.tag}
        # Keep the venv's console scripts (flower-superexec, flwr-clientapp, ...) reachable by name:
        # Flower starts its children through PATH.
        bindir = str(Path(sys.executable).parent)
        if bindir not in full_env.get("PATH", "").split(os.pathsep):
            full_env["PATH"] = bindir + os.pathsep + full_env.get("PATH", "")
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with contextlib.ExitStack() as stack:
            out: IO[bytes] | int = subprocess.PIPE
            if not pipe:
                out = stack.enter_context(open(log_path, "ab"))
                out.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n".encode())
                out.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
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


# --- flwr CLI -------------------------------------------------------------------------------------


# --- runs -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so ``with LocalFederation(...)`` cleans up on both."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
