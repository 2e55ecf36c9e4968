"""A whole federation on 127.0.0.1: one TLS SuperLink with node auth, N authenticated SuperNodes, one run.

Used by ``iotad local-federation``, the integration tests and as the reference for the container
entrypoints. Everything it starts is stopped on exit, on an exception and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from iotad.deploy.certs import CertPaths, generate_certs
from iotad.deploy.processes import (
    HOST,
    DeployError,
    ManagedProcess,
    ProcessRegistry,
    RunHandle,
    RunResult,
    free_port,
    list_nodes,
    register_node,
    submit_run,
    superlink_argv,
    supernode_argv,
    tagged_pids,
    wait_for_port,
    write_flwr_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NodeConfig = Mapping[str, Any]


def _orphaned_superexec(argv: list[bytes]) -> bool:
    """A ``flower-superexec`` whose ``--parent-pid`` process no longer exists."""
    if not any(a.endswith(b"flower-superexec") for a in argv[:2]) or b"--parent-pid" not in argv:
        return False
    try:
        parent = int(argv[argv.index(b"--parent-pid") + 1])
    except (IndexError, ValueError):
        return False
    return not Path(f"/proc/{parent}").exists()


@dataclass
class Device:
    """One simulated edge device: its key pair, node id, SuperNode process and local Runtime port."""

    name: str
    index: int
    node_config: dict[str, Any]
    env: dict[str, str]
    node_id: int | None = None
    port: int | None = None
    proc: ManagedProcess | None = None
    flwr_home: Path | None = None
    expect_refusal: bool = False  # unregistered, or started with overrides meant to be refused (tests)


@dataclass
class Timings:
    """Seconds measured by the launcher (for logs and benchmarks, never asserted)."""

    superlink_ready: float | None = None
    register: float | None = None
    devices_online: float | None = None
    superlink_restart: list[float] = field(default_factory=list)


class LocalFederation:
    """SuperLink + N SuperNodes as local processes, TLS and SuperNode authentication on.

    Parameters
    ----------
    workdir
        Everything lands here: ``certs/``, ``state/superlink.db``, ``logs/*.log``, ``flwr-home/`` (the
        ``flwr`` CLI's ``config.toml``) and one ``FLWR_HOME`` per process (each installs the app bundle).
    devices
        A count (names ``device-0``..) or explicit names.
    app_dir
        The Flower app (a directory with pyproject.toml); default: the iotad project root.
    rounds
        Sets run-config ``num-server-rounds``.
    run_config
        Further run-config overrides (keys must exist in ``[tool.flwr.app.config]``).
    node_config
        Per device: a mapping name -> config, or a callable (index, name) -> config. Merged over the
        defaults ``partition-id`` and ``num-partitions``.
    env, device_env
        Environment for every process / per device (mapping name -> env or callable (index, name) ->
        env). Each ``flwr-clientapp`` inherits its SuperNode's environment.
    max_retries
        ``--max-retries`` for the SuperNodes (None: retry forever, which is what lets them rejoin a
        restarted SuperLink).
    certs_dir
        Use this existing TLS material (``ca.crt``, ``server.pem``, ``server.key``; the layout of
        ``gen-certs.sh``) instead of generating ``workdir/certs`` (the aggregator's case).
    keys_dir
        Where device public keys are read for registration: ``keys_dir/<name>/node_key.pub``
        (default: ``<certs>/devices``).
    fleet_host, fleet_port, control_port
        Bind address of the Fleet API (default 127.0.0.1; an aggregator serving real devices binds
        0.0.0.0) and fixed ports (default: free ports). The Control API always stays on loopback.
    min_online
        Devices that must be online before a (re)submission in :meth:`run_supervised` (default: all).
    """

    def __init__(
        self,
        workdir: Path | str,
        devices: int | Sequence[str] = 2,
        *,
        app_dir: Path | str | None = None,
        rounds: int | None = None,
        run_config: Mapping[str, Any] | None = None,
        node_config: Mapping[str, NodeConfig] | Callable[[int, str], NodeConfig] | None = None,
        env: Mapping[str, str] | None = None,
        device_env: Mapping[str, Mapping[str, str]] | Callable[[int, str], Mapping[str, str]] | None = None,
        connection: str = "iotad-local",
        dns_names: Sequence[str] = ("aggregator",),
        max_retries: int | None = None,
        start_timeout: float = 60.0,
        join_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        certs_dir: Path | str | None = None,
        keys_dir: Path | str | None = None,
        fleet_host: str = HOST,
        fleet_port: int | None = None,
        control_port: int | None = None,
        min_online: int | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        names = [f"device-{k}" for k in range(devices)] if isinstance(devices, int) else list(devices)
        if len(set(names)) != len(names):
            raise ValueError("device names must be unique")
        self.app_dir = Path(app_dir).resolve() if app_dir is not None else PROJECT_ROOT
        self.run_config: dict[str, Any] = dict(run_config or {})
        if rounds is not None:
            self.run_config["num-server-rounds"] = int(rounds)
        self.connection = connection
        self.dns_names = tuple(dns_names)
        self.max_retries = max_retries
        self.start_timeout = start_timeout
        self.join_timeout = join_timeout
        self.stop_timeout = stop_timeout
        self.registry = ProcessRegistry(env=env)
        self.devices: dict[str, Device] = {}
        for k, name in enumerate(names):
            cfg: dict[str, Any] = {"partition-id": k, "num-partitions": len(names)}
            extra_cfg = node_config(k, name) if callable(node_config) else (node_config or {}).get(name, {})
            cfg.update(extra_cfg)
            denv = device_env(k, name) if callable(device_env) else (device_env or {}).get(name, {})
            self.devices[name] = Device(name=name, index=k, node_config=cfg, env=dict(denv))
        self.own_certs = certs_dir is None
        self.certs = CertPaths(Path(certs_dir).resolve() if certs_dir is not None else self.workdir / "certs")
        self.keys_dir = Path(keys_dir).resolve() if keys_dir is not None else None
        self.fleet_host = fleet_host
        self.min_online = min_online
        self.flwr_home = self.workdir / "flwr-home"
        self.database = self.workdir / "state" / "superlink.db"
        self.logs = self.workdir / "logs"
        self.fleet_port: int | None = fleet_port
        self.control_port: int | None = control_port
        self._superlink_started = False
        self.superlink: ManagedProcess | None = None
        self.runs: list[RunHandle] = []
        self.timings = Timings()

    # --- addresses ------------------------------------------------------------------------------

    @property
    def fleet_address(self) -> str:
        if self.fleet_port is None:
            raise DeployError("SuperLink not started")
        return f"{HOST}:{self.fleet_port}"

    @property
    def control_address(self) -> str:
        if self.control_port is None:
            raise DeployError("SuperLink not started")
        return f"{HOST}:{self.control_port}"

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, wait_online: bool = True) -> LocalFederation:
        """Certificates and keys, SuperLink, registrations, SuperNodes; waits until all are online."""
        try:
            self.prepare_certs()
            self.start_superlink()
            self.register_devices()
            for name in self.devices:
                self.start_device(name)
            if wait_online:
                t0 = time.monotonic()
                self.wait_online(len(self.devices))
                self.timings.devices_online = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def prepare_certs(self) -> CertPaths:
        """CA, aggregator certificate, one key pair per device (kept if already there).

        With ``certs_dir`` given, only checks that the TLS material is there."""
        if not self.own_certs:
            needed = (self.certs.ca_cert, self.certs.server_cert, self.certs.server_key)
            missing = [p for p in needed if not p.is_file()]
            if missing:
                raise DeployError(f"TLS material missing: {', '.join(map(str, missing))}")
            return self.certs
        return generate_certs(self.certs.root, devices=list(self.devices), dns_names=self.dns_names)

    def public_key(self, name: str) -> Path:
        """The OpenSSH public key of device ``name`` (what ``flwr supernode register`` reads)."""
        if self.keys_dir is not None:
            return self.keys_dir / name / "node_key.pub"
        return self.certs.device_public_key(name)

    def start_superlink(self) -> ManagedProcess:
        """Start (or restart, same ports and ``--database``) the SuperLink and wait for both APIs."""
        if self.superlink is not None and self.superlink.alive():
            raise DeployError("SuperLink already running")
        restarting = self._superlink_started
        if restarting:
            self.sweep_orphans()
        if self.fleet_port is None:
            self.fleet_port = free_port()
        if self.control_port is None:
            self.control_port = free_port()
        self.database.parent.mkdir(parents=True, exist_ok=True)
        write_flwr_config(self.flwr_home, self.connection, self.control_address, self.certs.ca_cert)
        argv = superlink_argv(
            ca_cert=self.certs.ca_cert,
            server_cert=self.certs.server_cert,
            server_key=self.certs.server_key,
            database=self.database,
            fleet_address=f"{self.fleet_host}:{self.fleet_port}",
            control_port=self.control_port,
        )
        env = {"FLWR_HOME": str(self.workdir / "superlink" / "flwr-home")}
        self.superlink = self.registry.spawn("superlink", argv, self.logs / "superlink.log", env=env)
        self._superlink_started = True
        (self.database.parent / "superlink.pid").write_text(f"{self.superlink.pid}\n")
        t0 = time.monotonic()
        wait_for_port(self.control_port, timeout=self.start_timeout, proc=self.superlink)
        wait_for_port(self.fleet_port, timeout=self.start_timeout, proc=self.superlink)
        elapsed = time.monotonic() - t0
        if restarting:
            self.timings.superlink_restart.append(elapsed)
        else:
            self.timings.superlink_ready = elapsed
        return self.superlink

    def sweep_orphans(self) -> list[int]:
        """Kill ``flwr-serverapp`` processes and parentless ``flower-superexec`` s left by a dead SuperLink.

        A SIGKILLed SuperLink leaves its ServerApp re-parented to init (docs/flower-notes.md); it
        would reconnect to the restarted SuperLink with a stale token. A SuperExec is an orphan when
        the ``--parent-pid`` it was started with is gone (the SuperNodes' own SuperExecs keep theirs).
        Only processes this federation started (tagged) are touched.
        """
        killed = []
        for pid in tagged_pids(self.registry.tag):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"flwr-serverapp" in a for a in argv) or _orphaned_superexec(argv):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed

    def kill_superlink(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Stop the SuperLink (SIGKILL by default: a crash). Its detached SuperExec and ServerApp are
        swept later by ``stop()``; SuperNodes keep retrying and rejoin a restarted SuperLink."""
        if self.superlink is None:
            return None
        return self.superlink.stop(timeout, sig=sig)

    def register_devices(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """``flwr supernode register`` each device's public key; returns name -> node id."""
        t0 = time.monotonic()
        ids = {}
        for name in names if names is not None else list(self.devices):
            dev = self.devices[name]
            try:
                dev.node_id = register_node(self.flwr_home, self.connection, self.public_key(name), name)
            except DeployError as exc:
                # Registrations survive in --database: a restarted aggregator sees its devices again.
                if "already in use" not in str(exc):
                    raise
                dev.node_id = -1  # registered earlier; the id is in the database
                continue
            ids[name] = dev.node_id
        self.timings.register = time.monotonic() - t0
        return ids

    def start_device(
        self,
        name: str,
        *,
        private_key: Path | None = None,
        root_certificates: Path | None = None,
        insecure: bool = False,
        auth: bool = True,
        max_retries: int | None = None,
        max_wait_time: float | None = None,
        superlink: str | None = None,
    ) -> ManagedProcess:
        """Start the SuperNode of ``name`` (must be a device of this federation, registered or not).

        The keyword arguments override the defaults (its own key, the federation CA, TLS); tests use
        them to start devices that must be refused (``auth=False``: no ``--auth-supernode-private-key``).
        """
        dev = self.devices[name]
        dev.expect_refusal = bool(
            dev.node_id is None or private_key or root_certificates or insecure or not auth or superlink
        )
        dev.port = free_port()
        dev.flwr_home = self.workdir / "devices" / name / "flwr-home"
        argv = supernode_argv(
            superlink=superlink or self.fleet_address,
            root_certificates=root_certificates or self.certs.ca_cert,
            private_key=(private_key or self.certs.device_private_key(name)) if auth else None,
            port=dev.port,
            node_config=dev.node_config,
            insecure=insecure,
            max_retries=max_retries if max_retries is not None else self.max_retries,
            max_wait_time=max_wait_time,
        )
        env = {"FLWR_HOME": str(dev.flwr_home), "IOTAD_DEVICE": name, **dev.env}
        dev.proc = self.registry.spawn(f"supernode:{name}", argv, self.logs / f"supernode-{name}.log", env=env)
        return dev.proc

    def add_device(
        self, name: str, node_config: NodeConfig | None = None, env: Mapping[str, str] | None = None
    ) -> Device:
        """Declare one more device (keys: ``prepare_certs``; registration: ``register_devices``)."""
        if name in self.devices:
            raise ValueError(f"device {name} exists")
        cfg = {
            "partition-id": len(self.devices),
            "num-partitions": len(self.devices) + 1,
            **(node_config or {}),
        }
        self.devices[name] = Device(name=name, index=len(self.devices), node_config=cfg, env=dict(env or {}))
        return self.devices[name]

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list`` as dicts (``node-id``, ``status``, ...)."""
        return list_nodes(self.flwr_home, self.connection)

    def wait_online(
        self, n: int | None = None, timeout: float | None = None, poll: float = 2.0
    ) -> list[dict[str, Any]]:
        """Wait until ``n`` nodes (default: all devices) are online; raises DeployError on timeout or when a
        SuperNode we started to join exits.

        Each ``flwr`` call costs about a second of CPU, so the SuperNode logs ("SuperNode ID: ...",
        printed once the SuperLink accepted the node) are watched first and ``flwr supernode list``
        confirms.
        """
        n = len(self.devices) if n is None else n
        deadline = time.monotonic() + (self.join_timeout if timeout is None else timeout)
        joining = [d for d in self.devices.values() if d.proc is not None and not d.expect_refusal]
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for dev in joining:
                if dev.proc is not None and not dev.proc.alive():
                    raise DeployError(f"SuperNode {dev.name} exited ({dev.proc.poll()}); see {dev.proc.log_path}")
            joined = sum("SuperNode ID:" in d.proc.log_text() for d in joining if d.proc is not None)
            if joined < min(n, len(joining)):
                time.sleep(0.2)
                continue
            with contextlib.suppress(DeployError):
                online = [x for x in self.nodes() if x.get("status") == "online"]
                if len(online) >= n:
                    return online
            time.sleep(poll)
        raise DeployError(f"{len(online)}/{n} SuperNodes online after the timeout; see {self.logs}")

    def submit(self, run_config: Mapping[str, Any] | None = None, rounds: int | None = None) -> RunHandle:
        """``flwr run <app_dir> <connection> --stream`` with the federation's run-config plus overrides."""
        cfg = {**self.run_config, **(run_config or {})}
        if rounds is not None:
            cfg["num-server-rounds"] = int(rounds)
        k = len(self.runs)
        handle = submit_run(
            self.registry,
            app_dir=self.app_dir,
            flwr_home=self.flwr_home,
            connection=self.connection,
            log_path=self.logs / f"run-{k}.log",
            run_config=cfg,
            name=f"flwr-run-{k}",
        )
        self.runs.append(handle)
        return handle

    def run(
        self,
        timeout: float | None = None,
        run_config: Mapping[str, Any] | None = None,
        rounds: int | None = None,
    ) -> RunResult:
        """Submit one run and wait for its end (bounded by ``timeout``: a ServerApp short of nodes waits
        forever)."""
        return self.submit(run_config, rounds).wait(timeout)

    def run_supervised(
        self,
        next_run_config: Callable[[RunResult | None], Mapping[str, Any] | None],
        *,
        timeout: float | None = None,
        max_attempts: int = 3,
        restart_superlink: bool = True,
    ) -> list[RunResult]:
        """Submit, and resubmit while a run is lost with its SuperLink.

        ``next_run_config(previous)`` returns the overrides of the next attempt (e.g. resume from the
        last checkpoint with the remaining rounds) or None to stop. A dead SuperLink is restarted on the
        same ports and database; SuperNodes rejoin by themselves with their node ids.
        """
        results: list[RunResult] = []
        previous: RunResult | None = None
        for _ in range(max_attempts):
            cfg = next_run_config(previous)
            if cfg is None:
                break
            if restart_superlink and (self.superlink is None or not self.superlink.alive()):
                self.start_superlink()
                self.wait_online(self.min_online)
            previous = self.submit(cfg).wait(timeout)
            results.append(previous)
            if not previous.resubmittable:
                break
        return results

    def stop(self) -> None:
        """Stop everything started here: run clients first (a SuperLink with an attached ``--stream``
        client may ignore SIGTERM), then SuperNodes, then the SuperLink, then tagged leftovers."""
        first = [r.proc for r in self.runs]
        first += [d.proc for d in self.devices.values() if d.proc is not None]
        if self.superlink is not None:
            first.append(self.superlink)
        self.registry.stop_all(timeout=self.stop_timeout, order=first)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def run_local_federation(
    workdir: Path | str,
    devices: int = 3,
    *,
    rounds: int = 3,
    rows_per_device: int = 4000,
    **kwargs: Any,
) -> list[RunResult]:
    """``iotad local-federation``: data, certificates, SuperLink, SuperNodes, device agents and the
    aggregator exporter on 127.0.0.1, R rounds, everything stopped on exit, Ctrl-C or SIGTERM.

    The stack itself is :func:`iotad.deploy.aggregator.run_local_stack` (the launcher owns the telemetry);
    see it for the keyword arguments.
    """
    from iotad.deploy.aggregator import run_local_stack

    return run_local_stack(workdir, devices, rounds=rounds, rows_per_device=rows_per_device, **kwargs)
