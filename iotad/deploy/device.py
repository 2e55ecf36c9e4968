"""Device launcher (``iotad device``): the SuperNode and the agent of one edge device, supervised.

The device container's main process. Everything it writes lives under one state directory (the
container's root filesystem is read-only)::

    <state>/flwr-home/   FLWR_HOME of the SuperNode (it installs each app bundle there)
    <state>/metrics/     PROMETHEUS_MULTIPROC_DIR shared by the ClientApps and the agent (wiped at start)
    <state>/model/       the global bundle the evaluate handler writes and the agent hot-reloads
    <state>/cache/       encoded splits of the local traffic (ClientApps)
    <state>/tmp/         TMPDIR
    <state>/logs/        child logs, unless they go to stdout (``--log-dir -``)

If either child exits, the other is stopped and the launcher exits non-zero, so the container
restart policy brings the device back as a whole. SIGTERM/SIGINT stop both and exit 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from iotad.deploy.flower import supernode_argv
from iotad.deploy.processes import ManagedProcess, ProcessRegistry
from iotad.telemetry.exporter import MULTIPROC_ENV, prepare_multiproc_dir
from iotad.telemetry.logs import RELAYED_ENV, Relay

log = logging.getLogger(__name__)

DEFAULT_SUPERNODE_PORT = 9094
DEFAULT_METRICS_PORT = 9401


@dataclass
class DeviceOptions:
    state_dir: Path
    device_name: str
    superlink: str
    root_certificates: Path
    private_key: Path
    data_path: Path
    supernode_host: str = "127.0.0.1"
    supernode_port: int = DEFAULT_SUPERNODE_PORT
    metrics_host: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT
    max_retries: int | None = None  # None: retry forever (rejoin a restarted aggregator)
    log_dir: str | None = None  # None: <state>/logs; "-": the launcher's stdout
    agent_args: list[str] = field(default_factory=list)  # source options: --replay/--tail/--capture, --rate, ...
    replay_path: Path | None = None  # what the agent replays when agent_args name no source (default: data_path)
    verbose: bool = False  # the agent's DEBUG lines too


class DeviceLauncher:
    """Starts the SuperNode and the agent in one supervised group."""

    def __init__(self, opts: DeviceOptions) -> None:
        self.opts = opts
        self.state = Path(opts.state_dir).resolve()
        self.dirs = {k: self.state / k for k in ("flwr-home", "metrics", "model", "cache", "tmp")}
        self.registry = ProcessRegistry()
        self.procs: list[ManagedProcess] = []
        self.relays: list[Relay] = []
        self._stop = False

    def _log_path(self, name: str) -> Path:
        if self.opts.log_dir == "-":
            return Path("/dev/stdout")  # through a Relay: the container log
        base = Path(self.opts.log_dir) if self.opts.log_dir else self.state / "logs"
        return base / f"{name}.log"

    def node_config(self) -> dict[str, Any]:
        return {
            "data-path": str(Path(self.opts.data_path).resolve()),
            "device-name": self.opts.device_name,
            "model-dir": str(self.dirs["model"]),
            "cache-dir": str(self.dirs["cache"]),
        }

    def env(self) -> dict[str, str]:
        return {
            MULTIPROC_ENV: str(self.dirs["metrics"]),
            "IOTAD_DEVICE": self.opts.device_name,
            "IOTAD_MODEL_DIR": str(self.dirs["model"]),
            "IOTAD_CACHE_DIR": str(self.dirs["cache"]),
            "TMPDIR": str(self.dirs["tmp"]),
        }

    def supernode_argv(self) -> list[str]:
        return supernode_argv(
            superlink=self.opts.superlink, root_certificates=self.opts.root_certificates,
            private_key=self.opts.private_key, port=self.opts.supernode_port, host=self.opts.supernode_host,
            node_config=self.node_config(), max_retries=self.opts.max_retries,
        )

    def agent_argv(self) -> list[str]:
        o = self.opts
        argv = [
            sys.executable, "-m", "iotad.cli", *(["-v"] if o.verbose else []), "agent", "--device", o.device_name,
            "--model-dir", str(self.dirs["model"]), "--metrics-dir", str(self.dirs["metrics"]),
            "--metrics-host", o.metrics_host, "--metrics-port", str(o.metrics_port),
        ]
        extra = list(o.agent_args)
        if not {"--replay", "--tail", "--capture"} & set(extra):
            extra += ["--replay", str(Path(o.replay_path or o.data_path).resolve())]
        return argv + extra

    def start(self) -> None:
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        prepare_multiproc_dir(self.dirs["metrics"], wipe=True)  # no counters of a previous boot
        self.registry.env.update(self.env())
        sn = self._spawn("supernode", self.supernode_argv(), {"FLWR_HOME": str(self.dirs["flwr-home"])})
        agent = self._spawn("agent", self.agent_argv())
        self.procs = [sn, agent]
        log.info("device %s: SuperNode pid %d -> %s, agent pid %d (/metrics on %s:%d)", self.opts.device_name,
                    sn.pid, self.opts.superlink, agent.pid, self.opts.metrics_host, self.opts.metrics_port)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        """One child; with ``--log-dir -`` its lines (and those of its children: the ClientApps) reach our
        stdout through a Relay, tagged with the device name, without Flower's colours and spacer lines."""
        relayed = self.opts.log_dir == "-"
        proc = self.registry.spawn(name, argv, self._log_path(name), pipe=relayed,
                                   env={**(env or {}), **({RELAYED_ENV: "1"} if relayed else {})})
        if relayed:
            assert proc.popen.stdout is not None
            relay = Relay(proc.popen.stdout, name, device=self.opts.device_name)
            relay.start()
            self.relays.append(relay)
        return proc

    def supervise(self, poll: float = 0.5) -> int:
        """Block until a signal (exit 0) or a child's exit (exit 1); stops both either way."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stop = True

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        supernode, next_superexec_check = self.procs[0], 0.0
        try:
            while not self._stop:
                dead = [p for p in self.procs if not p.alive()]
                if time.monotonic() >= next_superexec_check:  # a /proc scan: every 5 s is enough
                    next_superexec_check = time.monotonic() + 5.0
                    if supernode.lost_superexec():
                        dead.append(supernode)
                if dead:
                    for p in dead:
                        what = f"exited with {p.poll()}" if not p.alive() else "lost its SuperExec"
                        log.error("device %s: %s %s", self.opts.device_name, p.name, what)
                    return 1
                time.sleep(poll)
            return 0
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)

    def stop(self) -> None:
        # The agent first (it only reads), then the SuperNode and whatever ClientApp it runs.
        self.registry.stop_all(timeout=10.0, order=list(reversed(self.procs)))
        for relay in self.relays:  # the children's last lines (a traceback) still in the pipes
            relay.join(timeout=2.0)


def run_device(opts: DeviceOptions) -> int:
    """``iotad device``: returns the exit code (non-zero when a child died)."""
    missing = [p for p in (opts.root_certificates, opts.private_key, opts.data_path) if not Path(p).exists()]
    if missing:
        log.error("device %s: missing %s", opts.device_name, ", ".join(map(str, missing)))
        return 2
    launcher = DeviceLauncher(opts)
    launcher.start()
    return launcher.supervise()
