"""A whole federation on 127.0.0.1: one TLS SuperLink with node auth, N authenticated SuperNodes, one run.

Used by ``iotad local-federation``, the integration tests and as the reference for the container
entrypoints. Everything it starts is stopped on exit, on an exception and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iotad.deploy.certs import CertPaths, generate_certs
from iotad.deploy.fleet import Device, DeviceFleet, NodeConfig, Timings
from iotad.deploy.flower import (
    _orphaned_superexec,
    superlink_argv,
    write_flwr_config,
)
from iotad.deploy.processes import (
    HOST,
    DeployError,
    ManagedProcess,
    ProcessRegistry,
    free_port,
    tagged_pids,
    wait_for_port,
)
from iotad.deploy.runs import RunHandle, RunResult, submit_run

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class LocalFederation(DeviceFleet):
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
            superlink=self.superlink,
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
            if restart_superlink:
                self.stop_superlink_without_superexec()
            if restart_superlink and (self.superlink is None or not self.superlink.alive()):
                self.start_superlink()
                self.wait_online(self.min_online)
            previous = self.submit(cfg).wait(timeout)
            results.append(previous)
            if not previous.resubmittable:
                break
        return results

    def stop_superlink_without_superexec(self) -> bool:
        """Stop a SuperLink whose SuperExec died (no ServerApp could start again), so that it is restarted."""
        if self.superlink is None or not self.superlink.lost_superexec():
            return False
        log.warning("the SuperLink's SuperExec died (no ServerApp could start); stopping the SuperLink")
        self.superlink.stop(self.stop_timeout)
        return True

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
