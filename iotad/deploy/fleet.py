"""The devices of a local federation: their SuperNodes, registrations and keys (a mixin of LocalFederation)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotad.deploy.certs import CertPaths
from iotad.deploy.flower import (
    list_nodes,
    register_node,
    supernode_argv,
)
from iotad.deploy.processes import (
    HOST,
    DeployError,
    ManagedProcess,
    ProcessRegistry,
    free_port,
)

log = logging.getLogger(__name__)

NodeConfig = Mapping[str, Any]


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
    restarts: int = 0
    restarted_at: float = 0.0  # time.monotonic() of the last restart


@dataclass
class Timings:
    """Seconds measured by the launcher (for logs and benchmarks, never asserted)."""

    superlink_ready: float | None = None
    register: float | None = None
    devices_online: float | None = None
    superlink_restart: list[float] = field(default_factory=list)


class DeviceFleet:
    """The SuperNode side of :class:`~iotad.deploy.federation.LocalFederation`: keys, registrations,
    SuperNode processes and waiting for them to be online (state set by LocalFederation.__init__)."""

    workdir: Path
    devices: dict[str, Device]
    certs: CertPaths
    keys_dir: Path | None
    flwr_home: Path
    connection: str
    logs: Path
    registry: ProcessRegistry
    max_retries: int | None
    join_timeout: float
    fleet_port: int | None
    timings: Timings

    @property
    def fleet_address(self) -> str:
        if self.fleet_port is None:
            raise DeployError("SuperLink not started")
        return f"{HOST}:{self.fleet_port}"

    def public_key(self, name: str) -> Path:
        """The OpenSSH public key of device ``name`` (what ``flwr supernode register`` reads)."""
        if self.keys_dir is not None:
            return self.keys_dir / name / "node_key.pub"
        return self.certs.device_public_key(name)

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

    def restart_dead_devices(self, max_delay: float = 30.0) -> list[str]:
        """Start again every device whose SuperNode died, as a container's restart policy does: with a delay
        that doubles per restart up to ``max_delay`` s (a killed device's old session stays online on the
        SuperLink for up to a minute, and it refuses the key until then). A device meant to be refused is
        left alone. Returns the devices restarted."""
        restarted = []
        now = time.monotonic()
        for name, dev in self.devices.items():
            if dev.proc is None or dev.expect_refusal:
                continue
            if dev.proc.lost_superexec():
                log.warning("device %s: its SuperExec died (the SuperNode runs no ClientApp any more); "
                            "stopping the SuperNode", name)
                dev.proc.stop(10.0)
            if dev.proc.alive():
                continue
            if now - dev.restarted_at < min(2.0 ** dev.restarts, max_delay):
                continue
            log.warning("device %s: SuperNode exited with %s; restarting it", name, dev.proc.poll())
            self.start_device(name)
            dev.restarts += 1
            dev.restarted_at = now
            restarted.append(name)
        return restarted

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
