"""/metrics over HTTPS with client-certificate auth: only Prometheus's certificate (``gen-certs.sh --metrics``)
gets the metrics; no certificate, another CA's, a server-only certificate of our own CA, and plain HTTP are
refused, and the exporter keeps serving after each refusal."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from iotad.deploy.certs import CertPaths, generate_certs
from iotad.telemetry.device import DeviceTelemetry
from iotad.telemetry.exporter import MetricsServer, MetricsTLS, make_registry, serve_metrics
from iotad.telemetry.federation import AggregatorTelemetry

MON = Path(__file__).resolve().parents[3] / "monitoring"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_certs(tmp_path_factory.mktemp("certs"), devices=["device-0"], metrics=True)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_certs(tmp_path_factory.mktemp("other"), devices=["device-0"], metrics=True)


@pytest.fixture()
def server(certs: CertPaths) -> Iterator[MetricsServer]:
    reg = make_registry()
    AggregatorTelemetry(reg).round_started(7)
    cert, key = certs.device_metrics_cert("device-0")
    srv = serve_metrics(0, "127.0.0.1", registry=reg, tls=MetricsTLS(cert, key, certs.ca_cert))
    yield srv
    srv.close()


def _scrape(url: str, ca: Path, client: tuple[Path, Path] | None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return str(r.read().decode())


REFUSED = (ssl.SSLError, urllib.error.URLError, ConnectionError)


def test_prometheus_client_certificate_gets_the_metrics(server: MetricsServer, certs: CertPaths) -> None:
    assert server.url.startswith("https://")
    assert "iotad_fl_current_round 7.0" in _scrape(server.url, certs.ca_cert, certs.prometheus_client_cert)


@pytest.mark.parametrize("who", ["no certificate", "another CA", "our CA, server-only certificate"])
def test_other_scrapers_are_refused_and_the_exporter_lives_on(server: MetricsServer, certs: CertPaths,
                                                              other_ca: CertPaths, who: str) -> None:
    client = {"no certificate": None, "another CA": other_ca.prometheus_client_cert,
              "our CA, server-only certificate": (certs.server_cert, certs.server_key)}[who]
    with pytest.raises(REFUSED):
        _scrape(server.url, certs.ca_cert, client)
    assert "iotad_fl_current_round" in _scrape(server.url, certs.ca_cert, certs.prometheus_client_cert)


def test_plain_http_is_refused(server: MetricsServer, certs: CertPaths) -> None:
    with pytest.raises((*REFUSED, OSError)):
        urllib.request.urlopen(server.url.replace("https://", "http://"), timeout=10).read()
    assert "iotad_fl_current_round" in _scrape(server.url, certs.ca_cert, certs.prometheus_client_cert)


def test_partial_or_missing_tls_settings_are_clear_errors(certs: CertPaths, tmp_path: Path) -> None:
    cert, key = certs.device_metrics_cert("device-0")
    assert MetricsTLS.from_values(None, None, None) is None
    with pytest.raises(ValueError, match="missing: key, client CA"):
        MetricsTLS.from_values(cert, None, "")
    with pytest.raises(ValueError, match="no such file"):
        MetricsTLS.from_values(cert, key, tmp_path / "absent.crt")


def test_the_mtls_prometheus_config_is_the_plain_one_with_tls(certs: CertPaths, tmp_path: Path) -> None:
    plain = yaml.safe_load((MON / "prometheus.yml").read_text())
    mtls = yaml.safe_load((MON / "prometheus-mtls.yml").read_text())
    for job, plain_job in zip(mtls["scrape_configs"], plain["scrape_configs"], strict=True):
        tls = {k: job.pop(k) for k in ("scheme", "tls_config") if k in job}
        assert job == plain_job
        if job["job_name"].startswith("iotad-"):
            assert tls["scheme"] == "https"
            assert tls["tls_config"]["cert_file"] == "certs/prometheus/client.pem"
            assert tls["tls_config"]["server_name"] in ("aggregator", "device")
    assert {k: v for k, v in mtls.items() if k != "scrape_configs"} == \
        {k: v for k, v in plain.items() if k != "scrape_configs"}
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed (scripts/setup.sh installs it)")
    work = tmp_path / "prom"
    shutil.copytree(MON, work, ignore=shutil.ignore_patterns("grafana"))
    shutil.copytree(certs.root, work / "certs")
    out = subprocess.run([promtool, "check", "config", str(work / "prometheus-mtls.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
def test_a_real_prometheus_scrapes_both_jobs_over_mtls(certs: CertPaths, tmp_path: Path) -> None:
    servers = []
    agg_reg, dev_reg = make_registry(), make_registry()
    AggregatorTelemetry(agg_reg).round_started(3)
    DeviceTelemetry("device-0", dev_reg).model_loaded(model_round=3, threshold=0.1)
    dev_cert, dev_key = certs.device_metrics_cert("device-0")
    servers.append(serve_metrics(0, "127.0.0.1", registry=agg_reg,
                                 tls=MetricsTLS(certs.server_cert, certs.server_key, certs.ca_cert)))
    servers.append(serve_metrics(0, "127.0.0.1", registry=dev_reg, tls=MetricsTLS(dev_cert, dev_key, certs.ca_cert)))
    work = tmp_path / "prom"
    shutil.copytree(MON, work, ignore=shutil.ignore_patterns("grafana", "*.json"))
    shutil.copytree(certs.root, work / "certs")
    cfg = yaml.safe_load((work / "prometheus-mtls.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s")
    for job in cfg["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["refresh_interval"] = "1s"
    (work / "prometheus-mtls.yml").write_text(yaml.safe_dump(cfg))
    (work / "targets" / "aggregator.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{servers[0].port}"]}]))
    (work / "targets" / "device-0.json").write_text(
        json.dumps([{"targets": [f"127.0.0.1:{servers[1].port}"], "labels": {"device": "device-0"}}]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed (scripts/setup.sh installs it)")
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus-mtls.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = f"http://127.0.0.1:{port}/api/v1/targets?state=active"
        deadline = time.monotonic() + 60
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(query, timeout=5) as r:
                    targets = json.loads(r.read())["data"]["activeTargets"]
                health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets
                          if t["labels"]["job"].startswith("iotad-")}
            except OSError:
                pass
            if len(health) == 2 and all(h == "up" for h, _ in health.values()):
                break
            time.sleep(0.5)
        assert health == {"iotad-aggregator": ("up", ""), "iotad-devices": ("up", "")}, health
        q = urllib.parse.urlencode({"query": "iotad_edge_model_round"})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{q}", timeout=5) as r:
            assert json.loads(r.read())["data"]["result"][0]["value"][1] == "3"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for srv in servers:
            srv.close()
