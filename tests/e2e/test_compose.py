"""End to end: the real images under docker compose with the host-network overlay.

`docker-compose.yml` + `compose.hostnet.yml`, project ``iotad-e2e``, one ``up -d`` as the README says on a
fresh certificates directory: the one-shot ``init`` (certificates, device keys, 1500 synthetic rows per
device), then the aggregator and 3 device replicas, 2 rounds. Checks that
training completes, that every device's ``/metrics`` (127.0.0.1:9401+k) shows a model round and anomalies,
the aggregator's (127.0.0.1:9400) the completed rounds. Then ``IOTAD_DEVICES=5 up -d``: certificates kept,
no retraining, the two new devices score with the current model; ``--profile monitoring up -d`` with the
Prometheus image built here: every target up. Then ``docker compose down -v`` and that nothing of the
project is left (containers, networks, volumes). Samples the device containers' memory while they
train; ``IOTAD_E2E_RESULTS=<file>`` receives the figures as JSON (scripts/e2e.sh).

Needs the images (``scripts/build-images.sh``), a running docker engine and the compose v2 plugin:
missing is a failure, not a skip. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "iotad-e2e"
DEVICES = 3
ROUNDS = 2
HOST = "127.0.0.1"
AGG_METRICS = 9400
DEVICE_METRICS = 9401  # device-k: 9401 + k
SUPERNODE = 9500  # device-k: 9500 + k
SCALED = 5  # the second `up`: IOTAD_DEVICES=5
PROMETHEUS = 9090
PORTS = [9092, 9093, AGG_METRICS, PROMETHEUS, *(DEVICE_METRICS + k for k in range(SCALED)),
         *(SUPERNODE + k for k in range(SCALED))]
TRAIN_TIMEOUT = float(os.environ.get("IOTAD_E2E_TRAIN_TIMEOUT", "900"))
COMPOSE = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "compose.hostnet.yml")]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def run(args: list[str], env: dict[str, str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of one /metrics endpoint on 127.0.0.1."""
    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def value(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def project_objects(kind: str) -> list[str]:
    args = {"container": ["docker", "ps", "-a"], "network": ["docker", "network", "ls"],
            "volume": ["docker", "volume", "ls"]}[kind]
    out = subprocess.run([*args, "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return out.split()


def mib(text: str) -> float:
    m = re.match(r"([\d.]+)\s*([KMG]i?B|B)", text.strip())
    if not m:
        return 0.0
    return float(m.group(1)) * {"B": 1 / 2**20, "KiB": 1 / 1024, "KB": 1 / 1024, "MiB": 1.0, "MB": 1.0,
                                "GiB": 1024.0, "GB": 1024.0}[m.group(2)]


class MemorySampler(threading.Thread):
    """``docker stats`` of the project's containers every few seconds: peak usage per container (MiB,
    the engine's figure: usage without page cache)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            proc = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
                                  capture_output=True, text=True, timeout=60)
            for line in proc.stdout.splitlines():
                name, _, usage = line.partition(" ")
                if name.startswith(PROJECT + "-"):
                    self.peak[name] = max(self.peak.get(name, 0.0), mib(usage.split("/")[0]))
            self.stop.wait(1.0)


def cgroup_peak_mib(container: str) -> float | None:
    """The kernel's peak for the container's cgroup (v1 max_usage_in_bytes or v2 memory.peak; page cache
    included), or None where the cgroup is not visible."""
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", container], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.max_usage_in_bytes",
                 f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.peak",
                 f"/sys/fs/cgroup/docker/{cid}/memory.peak"):
        try:
            return int(Path(path).read_text()) / 2**20
        except (OSError, ValueError):
            continue
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    for tool in ("docker",):
        assert shutil.which(tool), f"{tool} not on PATH (scripts/install-docker.sh)"
    assert subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0, \
        "the docker compose v2 plugin is missing (scripts/install-docker.sh)"
    e = {k: v for k, v in os.environ.items() if not k.startswith(("IOTAD_", "COMPOSE_"))}
    e.update(COMPOSE_PROJECT_NAME=PROJECT, IOTAD_DEVICES=str(DEVICES), IOTAD_ROUNDS=str(ROUNDS),
             IOTAD_ROWS_PER_DEVICE="1500", IOTAD_LOCAL_EPOCHS="1",
             IOTAD_CERTS_DIR=str(tmp_path_factory.mktemp("compose") / "certs"))
    e.setdefault("IOTAD_VERSION", os.environ.get("IOTAD_VERSION", "0.1.0"))
    for image in (f"iotad-server:{e['IOTAD_VERSION']}", f"iotad-client:{e['IOTAD_VERSION']}"):
        assert run(["docker", "image", "inspect", image], e, 30, check=False).returncode == 0, \
            f"image {image} missing: build it with scripts/build-images.sh"
    return e


@pytest.fixture(scope="module")
def stack(env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    run([*COMPOSE, "--profile", "monitoring", "down", "-v", "--remove-orphans"], env, 180)  # an aborted run's
    busy = [p for p in PORTS if port_busy(p)]
    assert not busy, f"ports in use on 127.0.0.1 (needed by the host-network overlay): {busy}"
    networks_before = set(subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True,
                                         timeout=60, check=True).stdout.split())
    facts: dict[str, object] = {"networks_before": networks_before}
    sampler = MemorySampler()
    failed_before = request.session.testsfailed
    t0 = time.monotonic()
    try:
        sampler.start()
        run([*COMPOSE, "up", "-d"], env, 600)  # the README's command: init, then aggregator and devices
        facts["up_seconds"] = round(time.monotonic() - t0, 1)
        facts["t0"] = t0
        facts["sampler"] = sampler
        yield facts
        if request.session.testsfailed > failed_before:
            dump_logs(env)
    except BaseException:
        dump_logs(env)
        raise
    finally:
        sampler.stop.set()
        t_down = time.monotonic()
        down = run([*COMPOSE, "--profile", "monitoring", "down", "-v", "--remove-orphans", "--timeout", "30"], env,
                   300, check=False)
        facts["down"] = down
        facts["down_seconds"] = round(time.monotonic() - t_down, 1)


def dump_logs(env: dict[str, str]) -> None:
    logs = run([*COMPOSE, "logs", "--no-color", "--tail", "80"], env, 120, check=False)
    print(logs.stdout[-30000:], logs.stderr[-2000:])


def wait_for(what: str, check, timeout: float, every: float = 3.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:  # not listening yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def test_training_completes_and_every_device_detects(stack: dict[str, object], env: dict[str, str]) -> None:
    t0 = float(stack["t0"])  # type: ignore[arg-type]
    wait_for(f"{ROUNDS} completed rounds on the aggregator",
             lambda: value(scrape(AGG_METRICS), "iotad_fl_completed_rounds_total") >= ROUNDS, TRAIN_TIMEOUT)
    trained = time.monotonic() - t0
    agg = scrape(AGG_METRICS)
    assert value(agg, "iotad_fl_completed_rounds_total") == ROUNDS
    assert value(agg, "iotad_fl_planned_rounds") == ROUNDS

    devices: dict[str, dict[str, float]] = {}
    for k in range(DEVICES):
        name = f"device-{k}"

        def ready(k: int = k, name: str = name) -> dict[str, float] | None:
            s = scrape(DEVICE_METRICS + k)
            ok = (s.get(f'iotad_edge_model_round{{device="{name}"}}', 0) >= 1
                  and s.get(f'iotad_edge_anomalous_flows_total{{device="{name}"}}', 0) > 0)
            return s if ok else None

        s = wait_for(f"{name} detecting with a global model", ready, 240)
        devices[name] = {
            "model_round": s[f'iotad_edge_model_round{{device="{name}"}}'],
            "scored": s[f'iotad_edge_scored_flows_total{{device="{name}"}}'],
            "anomalous": s[f'iotad_edge_anomalous_flows_total{{device="{name}"}}'],
        }
        # Its own identity only: one device label per endpoint.
        labels = {m.group(1) for key in s for m in [re.search(r'device="([^"]+)"', key)] if m}
        assert labels == {name}, labels
    # The devices end on the last round's model (the evaluate of round R writes it).
    wait_for("every device on the final model",
             lambda: all(scrape(DEVICE_METRICS + k).get(f'iotad_edge_model_round{{device="device-{k}"}}', 0)
                         >= ROUNDS for k in range(DEVICES)), 120)

    sampler = stack["sampler"]
    assert isinstance(sampler, MemorySampler)
    containers = run(["docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
                      "--format", "{{.Names}} {{.Status}}"], env, 60).stdout.split("\n")
    devices_up = [c for c in containers if c.startswith(f"{PROJECT}-device-")]
    assert len(devices_up) == DEVICES, containers
    assert all("Restarting" not in c for c in containers), containers
    stack["results"] = {
        "devices": DEVICES, "rounds": ROUNDS, "rows_per_device": 1500, "local_epochs": 1,
        "up_seconds": stack["up_seconds"],
        "seconds_to_trained": round(trained, 1),
        "device_metrics": devices,
        "peak_mib_docker_stats": {k: round(v, 1) for k, v in sorted(sampler.peak.items())},
        "peak_mib_cgroup": {c.split()[0]: round(p, 1) for c in containers if c
                            for p in [cgroup_peak_mib(c.split()[0])] if p is not None},
    }


def test_second_up_keeps_certificates_and_new_devices_get_the_model(stack: dict[str, object],
                                                                   env: dict[str, str]) -> None:
    """Runs after training (module order): ``IOTAD_DEVICES=5 docker compose up -d``. The certificates and
    device keys stay, nothing is trained again, and the two new devices score with the current model
    (the aggregator delivers it to devices that do not hold it)."""
    certs = Path(env["IOTAD_CERTS_DIR"])
    kept = {p: p.read_bytes() for p in [certs / "ca.crt", certs / "server.key", *certs.glob("devices/*/node_key")]}
    t0 = time.monotonic()
    env["IOTAD_DEVICES"] = str(SCALED)  # from here on (the later tests and the teardown)
    run([*COMPOSE, "up", "-d"], env, 600)
    assert all(p.read_bytes() == b for p, b in kept.items()), "a second up replaced certificates or keys"
    assert len(list(certs.glob("devices/*/node_key"))) == SCALED

    def scoring(k: int) -> bool:
        s = scrape(DEVICE_METRICS + k)
        name = f"device-{k}"
        return (s.get(f'iotad_edge_model_round{{device="{name}"}}', 0) >= ROUNDS
                and s.get(f'iotad_edge_scored_flows_total{{device="{name}"}}', 0) > 0)

    for k in range(SCALED):
        wait_for(f"device-{k} scoring with the round-{ROUNDS} model after scaling up",
                 lambda k=k: scoring(k), 480)
    agg = scrape(AGG_METRICS)
    assert value(agg, "iotad_fl_completed_rounds_total") == ROUNDS  # republished, not retrained
    assert value(agg, "iotad_fl_model_delivered_devices_total") >= SCALED - DEVICES
    results = stack.get("results")
    if isinstance(results, dict):
        results["scale_up_seconds_to_scoring"] = round(time.monotonic() - t0, 1)

    def healthy() -> list[str]:
        return run(["docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--filter",
                    "health=healthy", "--format", "{{.Names}}"], env, 60).stdout.split()

    # The aggregator and every device: a device is healthy only once it scores with a model.
    wait_for("the aggregator and every device healthy", lambda: len(healthy()) == SCALED + 1, 120)


def test_monitoring_profile_offline_scrapes_every_target(stack: dict[str, object], env: dict[str, str]) -> None:
    """``--profile monitoring up -d`` with the Prometheus image built here (no registry): the aggregator
    and all five devices are up in Prometheus, found through the target files they wrote themselves."""
    version = env["IOTAD_VERSION"]
    assert run(["docker", "image", "inspect", f"iotad-prometheus:{version}"], env, 30, check=False).returncode == 0, \
        "image iotad-prometheus missing: build it with scripts/build-images.sh"
    run([*COMPOSE, "--profile", "monitoring", "up", "-d"], env, 300)

    def all_up() -> list[dict] | None:
        url = f"http://{HOST}:{PROMETHEUS}/api/v1/targets?state=active"
        active = json.load(urllib.request.urlopen(url, timeout=5))["data"]["activeTargets"]
        iotad = [t for t in active if t["labels"]["job"].startswith("iotad-")]
        return iotad if len(iotad) == SCALED + 1 and all(t["health"] == "up" for t in iotad) else None

    targets = wait_for("Prometheus scraping the aggregator and every device", all_up, 180)
    devices = sorted(t["labels"].get("device", "") for t in targets if t["labels"]["job"] == "iotad-devices")
    assert devices == [f"device-{k}" for k in range(SCALED)]
    results = stack.get("results")
    if isinstance(results, dict):
        results["prometheus_targets_up"] = len(targets)


def test_down_leaves_nothing(stack: dict[str, object], env: dict[str, str]) -> None:
    """Runs last (module order): tears the stack down and checks nothing of the project is left."""
    results = stack.get("results")
    # Tear down now (the fixture's finalizer runs it again, harmlessly).
    t = time.monotonic()
    run([*COMPOSE, "--profile", "monitoring", "down", "-v", "--remove-orphans", "--timeout", "30"], env, 300)
    down_seconds = round(time.monotonic() - t, 1)
    assert project_objects("container") == []
    assert project_objects("network") == []
    assert project_objects("volume") == []
    networks_after = set(subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True,
                                        timeout=60, check=True).stdout.split())
    assert networks_after == stack["networks_before"], "compose created a network"
    assert not [p for p in PORTS if port_busy(p)], "a port of the stack is still open"
    out = os.environ.get("IOTAD_E2E_RESULTS")
    if out and isinstance(results, dict):
        results["down_seconds"] = down_seconds
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
