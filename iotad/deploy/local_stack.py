"""``iotad local-federation``: data, certificates, SuperLink, SuperNodes, agents and exporters on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iotad.deploy.aggregator import Aggregator
from iotad.deploy.federation import LocalFederation
from iotad.deploy.processes import HOST, free_port, sigterm_as_keyboard_interrupt
from iotad.deploy.runs import RunResult
from iotad.telemetry.exporter import (
    MULTIPROC_ENV,
    prepare_multiproc_dir,
)


@dataclass
class LocalStackEndpoints:
    aggregator: str
    devices: dict[str, str]
    fleet: str
    control: str


def _write_targets(targets: Path, agg_port: int, device_ports: Mapping[str, int]) -> None:
    """Prometheus file_sd files (monitoring/targets/README.md)."""
    targets.mkdir(parents=True, exist_ok=True)
    for old in targets.glob("*.json"):
        old.unlink()
    (targets / "aggregator.json").write_text(json.dumps([{"targets": [f"{HOST}:{agg_port}"]}]) + "\n")
    for name, port in device_ports.items():
        entry = [{"targets": [f"{HOST}:{port}"], "labels": {"device": name}}]
        (targets / f"{name}.json").write_text(json.dumps(entry) + "\n")


def run_local_stack(
    workdir: Path | str,
    devices: int = 3,
    *,
    rounds: int = 3,
    rows_per_device: int = 4000,
    keep_running: bool = False,
    resume: bool = False,
    local_epochs: int = 1,
    rate: float = 100.0,
    seed: int = 0,
    run_timeout: float | None = 1800.0,
    extra_run_config: Mapping[str, Any] | None = None,
    agent_args: Sequence[str] = (),
    device_superlink: Mapping[str, str] | None = None,
    out: Any = None,
) -> list[RunResult]:
    """Data, certificates, SuperLink, N SuperNodes + agents, the aggregator exporter; R rounds.

    Everything lands in ``workdir``: ``data/``, ``certs/``, ``state/``, ``checkpoints/``, ``logs/``,
    ``devices/<name>/{metrics,model,cache}``, ``targets/`` (Prometheus file_sd) and
    ``endpoints.json``. Stops everything it started on return, on an exception, Ctrl-C or SIGTERM.
    ``device_superlink`` routes a device to another Fleet API address (a network-fault test's TCP relay).
    """
    say = out or (lambda msg: print(msg, flush=True))
    w = Path(workdir).resolve()
    data = w / "data"
    names = [f"device-{k}" for k in range(devices)]
    if not (data / "dataset.json").exists() or not all((data / n / "traffic.csv").exists() for n in names):
        from iotad.data.synthetic import write_synthetic

        write_synthetic(data, devices, rows_per_device, seed)
        say(f"wrote SYNTHETIC traffic: {devices} devices x {rows_per_device} rows -> {data}")
    if not resume:  # a fresh federation: no checkpoints, no old bundles, no old SuperLink state
        for stale in (w / "checkpoints", w / "state", *(w / "devices" / n / "model" for n in names)):
            shutil.rmtree(stale, ignore_errors=True)
        (w / "aggregator-status.json").unlink(missing_ok=True)

    def dev_dir(name: str) -> Path:
        return w / "devices" / name

    def node_config(k: int, name: str) -> dict[str, Any]:
        return {
            "data-path": str(data / name / "traffic.csv"),
            "device-name": name,
            "model-dir": str(dev_dir(name) / "model"),
            "cache-dir": str(dev_dir(name) / "cache"),
        }

    def device_env(k: int, name: str) -> dict[str, str]:
        return {
            MULTIPROC_ENV: str(dev_dir(name) / "metrics"),
            "IOTAD_DEVICE": name,
            "IOTAD_MODEL_DIR": str(dev_dir(name) / "model"),
            "IOTAD_CACHE_DIR": str(dev_dir(name) / "cache"),
        }

    fed = LocalFederation(w, names, node_config=node_config, device_env=device_env, min_online=devices)
    agg = Aggregator(
        fed, rounds=rounds, checkpoint_dir=w / "checkpoints", multiproc_dir=w / "aggregator" / "metrics",
        run_config={"local-epochs": local_epochs, **(extra_run_config or {})}, min_nodes=devices,
        metrics_port=free_port(), metrics_host=HOST, run_timeout=run_timeout, join_timeout=180.0,
    )
    results: list[RunResult] = []
    stopping = threading.Event()

    def restart_dead_devices() -> None:  # the local stand-in for the containers' restart policy
        while not stopping.wait(1.0):
            for name in fed.restart_dead_devices():
                say(f"{name}: SuperNode died; restarted (restart {fed.devices[name].restarts})")

    watchdog = threading.Thread(target=restart_dead_devices, name="device-watchdog", daemon=True)
    with sigterm_as_keyboard_interrupt():
        try:
            agg.start()
            device_ports: dict[str, int] = {}
            for name in names:
                prepare_multiproc_dir(dev_dir(name) / "metrics", wipe=True)
                fed.start_device(name, superlink=(device_superlink or {}).get(name))
                port = free_port()
                argv = [
                    sys.executable, "-m", "iotad.cli", "-v", "agent", "--device", name,
                    "--model-dir", str(dev_dir(name) / "model"), "--metrics-dir", str(dev_dir(name) / "metrics"),
                    "--metrics-port", str(port), "--metrics-host", HOST,
                    "--replay", str(data / name / "traffic.csv"), "--rate", str(rate), *agent_args,
                ]
                fed.registry.spawn(f"agent:{name}", argv, fed.logs / f"agent-{name}.log",
                                   env=device_env(0, name))
                device_ports[name] = port
            assert agg.server is not None
            _write_targets(w / "targets", agg.server.port, device_ports)
            endpoints = LocalStackEndpoints(
                aggregator=agg.server.url,
                devices={n: f"http://{HOST}:{p}/metrics" for n, p in device_ports.items()},
                fleet=fed.fleet_address, control=fed.control_address,
            )
            (w / "endpoints.json").write_text(json.dumps(asdict(endpoints), indent=2) + "\n")
            say(f"Fleet API (gRPC, TLS): {fed.fleet_address}   Control API (HTTPS, loopback): {fed.control_address}")
            say(f"aggregator /metrics: {endpoints.aggregator}")
            for n, url in endpoints.devices.items():
                say(f"{n} /metrics: {url}")
            say(f"Prometheus file_sd targets: {w / 'targets'}   logs: {fed.logs}")
            watchdog.start()
            results = agg.train()
            for k, att in enumerate(agg.status.attempts, start=1):
                say(f"run attempt {k}: run {att.run_id} {att.status} (from round {att.resume_from_round}, "
                    f"reason {att.reason or 'fresh'})")
            say(f"training {agg.status.state}: {agg.status.completed_rounds}/{rounds} rounds; "
                f"checkpoints in {w / 'checkpoints'}")
            if keep_running:
                say("serving metrics and detecting until interrupted (Ctrl-C)")
                agg.serve_forever()
        except KeyboardInterrupt:
            say("interrupted: stopping everything")
        finally:
            stopping.set()
            if watchdog.is_alive():
                watchdog.join(10)
            agg.stop()
    return results


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

    The stack itself is :func:`run_local_stack` (the launcher owns the telemetry); see it for the
    keyword arguments.
    """
    return run_local_stack(workdir, devices, rounds=rounds, rows_per_device=rows_per_device, **kwargs)
