"""Static checks of the compose files: `docker compose config -q` with and without the monitoring profile
(plain and with the host-network overlay), plus the properties the stack relies on, read from the
resolved configuration. Needs the docker CLI with the compose v2 plugin (no engine, no images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BASE = ["-f", str(ROOT / "docker-compose.yml")]
HOSTNET = [*BASE, "-f", str(ROOT / "compose.hostnet.yml")]


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("docker"), "docker CLI not on PATH (scripts/install-docker.sh)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTAD_", "COMPOSE_", "GRAFANA_"))}
    return subprocess.run(["docker", "compose", "--project-directory", str(ROOT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("files", [BASE, HOSTNET], ids=["bridge", "hostnet"])
@pytest.mark.parametrize("profile", [[], ["--profile", "monitoring"], ["--profile", "grafana"]],
                         ids=["default", "monitoring", "grafana"])
def test_config_is_valid(files: list[str], profile: list[str]) -> None:
    proc = compose(*files, *profile, "config", "-q")
    assert proc.returncode == 0, proc.stderr


def resolved(*args: str) -> dict:
    proc = compose(*args, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_default_stack_properties() -> None:
    cfg = resolved(*BASE)
    services = cfg["services"]
    assert set(services) == {"init", "aggregator", "device"}  # monitoring only with its profile
    assert services["device"]["scale"] == 3
    for name in ("aggregator", "device", "init"):
        s = services[name]
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"] and s["init"] is True, name
        assert "no-new-privileges:true" in s["security_opt"], name
        assert any(t.startswith("/tmp") for t in s["tmpfs"]), name
        assert ":latest" not in s["image"] and s["pull_policy"] in ("never", "build"), name
    for name in ("aggregator", "device"):
        assert services[name]["restart"] == "unless-stopped"
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["device"]["depends_on"]["aggregator"]["condition"] == "service_healthy"
    # Certificates as read-only directory mounts (a file secret would fail `up` before init made it);
    # the CA key stays with init.
    certs = str(ROOT / "certs")
    agg_mounts = {v["target"]: v for v in services["aggregator"]["volumes"]}
    assert agg_mounts["/run/iotad/certs"]["source"] == certs + "/aggregator"
    assert agg_mounts["/run/iotad/pubkeys"]["source"] == certs + "/pubkeys"
    dev_mounts = {v["target"]: v for v in services["device"]["volumes"]}
    assert dev_mounts["/run/iotad/keys"]["source"] == certs + "/devices"
    for m in [*agg_mounts.values(), *dev_mounts.values()]:
        assert m["type"] == "volume" or m["read_only"] is True, m
        assert m["type"] == "volume" or not m["source"].rstrip("/").endswith("certs"), m
    assert services["aggregator"]["environment"]["IOTAD_CERTS_DIR"] == "/run/iotad/certs"
    assert services["device"]["environment"]["IOTAD_ROOT_CERTIFICATES"] == "/run/iotad/keys/ca.crt"
    assert "secrets" not in services["aggregator"] and "secrets" not in cfg
    assert services["aggregator"]["environment"]["IOTAD_METRICS_PORT"] == "9400"
    assert services["device"]["environment"]["IOTAD_METRICS_PORT"] == "9401"
    assert services["aggregator"]["environment"]["IOTAD_MIN_NODES"] == "3"
    # Metrics reachable from the host (loopback only): the aggregator's port, one port per device replica.
    published = {(p["target"], p.get("host_ip"), p.get("published")) for name in ("aggregator", "device")
                 for p in services[name]["ports"]}
    assert (9400, "127.0.0.1", "9400") in published
    assert (9401, "127.0.0.1", "9401-9432") in published
    assert services["device"]["healthcheck"]["test"] == ["CMD", "python3", "-m", "iotad.edge.health"]


def test_devices_is_one_variable() -> None:
    env = {**os.environ, "IOTAD_DEVICES": "5"}
    proc = subprocess.run(["docker", "compose", *BASE, "config", "--format", "json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert services["device"]["scale"] == 5
    assert services["device"]["environment"]["IOTAD_DEVICES"] == "5"
    assert services["aggregator"]["environment"]["IOTAD_MIN_NODES"] == "5"
    assert services["init"]["environment"]["IOTAD_DEVICES"] == "5"


def test_monitoring_profile_is_built_here_and_grafana_is_separate() -> None:
    services = resolved(*BASE, "--profile", "monitoring")["services"]
    assert "grafana" not in services  # the only image from a registry has its own profile
    prom = services["prometheus"]
    assert prom["image"].startswith("iotad-prometheus:") and prom["pull_policy"] == "never"
    assert prom["build"]["dockerfile"] == "Dockerfile.prometheus"
    assert {v["target"] for v in prom["volumes"]} >= {"/etc/prometheus", "/etc/prometheus/targets", "/prometheus"}
    services = resolved(*BASE, "--profile", "grafana")["services"]
    graf = services["grafana"]
    assert "prometheus" in services  # grafana's data source comes along
    assert graf["image"].startswith("grafana/grafana:11.")
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert not graf["environment"]["GF_SECURITY_ADMIN_PASSWORD"]  # from .env only, never a default
    mounts = {v["target"]: v for v in prom["volumes"]}
    assert mounts["/etc/prometheus"]["source"] == str(ROOT / "monitoring")
    assert mounts["/etc/prometheus"]["read_only"] is True
    gmounts = {v["target"] for v in graf["volumes"]}
    assert {"/etc/grafana/provisioning", "/etc/grafana/dashboards"} <= gmounts


def test_hostnet_overlay_uses_no_compose_network() -> None:
    cfg = resolved(*HOSTNET, "--profile", "monitoring")
    for name, s in cfg["services"].items():
        assert s.get("network_mode") == "host", name
        assert not s.get("networks"), name
        assert not s.get("ports"), name
    assert not cfg.get("networks"), cfg.get("networks")
    dev = cfg["services"]["device"]["environment"]
    assert dev["IOTAD_SUPERLINK"].startswith("127.0.0.1:")
    assert dev["IOTAD_PORTS_BY_INDEX"] == "1"
    agg = cfg["services"]["aggregator"]["environment"]
    assert agg["IOTAD_FLEET_ADDRESS"].startswith("127.0.0.1:") and agg["IOTAD_ROUNDS"] == "2"
    # Prometheus finds the targets through the files the services write into the shared volume.
    for name in ("aggregator", "device"):
        s = cfg["services"][name]
        assert s["environment"]["IOTAD_TARGETS_DIR"] == "/run/iotad/targets"
        assert {(v["source"], v["target"]) for v in s["volumes"] if v["type"] == "volume"} >= \
            {("targets", "/run/iotad/targets")}
    prom = {(v.get("source"), v["target"]) for v in cfg["services"]["prometheus"]["volumes"]}
    assert ("targets", "/etc/prometheus/targets") in prom
