"""Prometheus config, alert rules and Grafana dashboards: promtool checks, metric names, a live query.

promtool and prometheus come from Debian's `prometheus` package; .ci/run installs it. These tests fail
(never skip) without it, so a CI image that lost the package cannot pass silently.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from iotad.telemetry import catalogue as tcat
from iotad.telemetry import device as tdev
from iotad.telemetry import exporter as texp
from iotad.telemetry import federation as tfed
from iotad.telemetry import spec as tspec

ROOT = Path(__file__).resolve().parents[3]
MON = ROOT / "monitoring"
CONFIG = MON / "prometheus.yml"
RULES = MON / "rules" / "iotad.rules.yml"
RULE_TESTS = MON / "rules" / "iotad.rules.test.yml"
DASHBOARDS = sorted((MON / "grafana" / "dashboards").glob("*.json"))
DATASOURCE_UID = "iotad-prometheus"
INSTALL_HINT = ("{tool} not found: install Debian's prometheus package (.ci/run must run "
                "`apt-get install -y --no-install-recommends prometheus`)")
# An iotad metric name in PromQL; not part of a longer identifier or a recording-rule name.
METRIC_RE = re.compile(r"(?<![\w:])iotad_[a-z0-9_]+(?![\w:])")
REQUIRED_ALERTS = {"IotadDeviceDown", "IotadTrainingStalled", "IotadRoundDevicesFailed",
                   "IotadAnomalyRateSpike", "IotadThresholdDrift", "IotadRejectedRowsSpike"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(INSTALL_HINT.format(tool=name))
    return path


def promtool(*args: str, cwd: Path = ROOT) -> str:
    res = subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"promtool {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) for every panel target and query variable."""
    out = []
    for f in DASHBOARDS:
        board = json.loads(f.read_text())
        for p in panels(board):
            for target in p.get("targets", []):
                out.append((f.name, p["title"], target["expr"]))
        for var in board.get("templating", {}).get("list", []):
            q = var.get("query")
            out.append((f.name, f"${var['name']}", q["query"] if isinstance(q, dict) else q))
    return out


def known_series() -> set[str]:
    return {n for s in tcat.catalogue() for n in tspec.sample_names(s)}


# --------------------------------------------------------------------------------------------------
# promtool


def test_promtool_check_config() -> None:
    out = promtool("check", "config", str(CONFIG))
    assert "SUCCESS" in out and "1 rule files found" in out


def test_promtool_check_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_promtool_rule_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))


def test_every_required_alert_exists_and_is_unit_tested() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts >= REQUIRED_ALERTS
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert tested == alerts, f"alerts without a promtool test: {alerts - tested}"
    for r in rules():
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]


# --------------------------------------------------------------------------------------------------
# Metric names used by rules and dashboards exist in iotad/telemetry/


def test_metric_regex_does_not_match_label_values() -> None:
    assert METRIC_RE.findall('rate(iotad_edge_x_total{job="iotad-devices"}[5m]) and a:iotad_b:c') == [
        "iotad_edge_x_total"]


def test_rules_reference_only_defined_metrics() -> None:
    known = known_series()
    for r in rules():
        for name in METRIC_RE.findall(r["expr"]):
            assert name in known, f"{r.get('alert')}: {name} is not defined in iotad/telemetry/"


def test_dashboards_reference_only_defined_metrics() -> None:
    known = known_series()
    queries = dashboard_queries()
    assert queries
    for board, title, expr in queries:
        names = METRIC_RE.findall(expr)
        assert names or "up{" in expr or "time()" in expr, f"{board} / {title}: no iotad metric in {expr}"
        for name in names:
            assert name in known, f"{board} / {title}: {name} is not defined in iotad/telemetry/"


def test_dashboards_cover_every_metric() -> None:
    used = {n for _, _, expr in dashboard_queries() for n in METRIC_RE.findall(expr)}
    for spec in tcat.catalogue():
        assert used & set(tspec.sample_names(spec)), f"{spec.name} appears on no dashboard"


# --------------------------------------------------------------------------------------------------
# Grafana provisioning


def test_grafana_provisioning() -> None:
    ds_files = list((MON / "grafana" / "provisioning" / "datasources").glob("*.yml"))
    sources = [d for f in ds_files for d in yaml.safe_load(f.read_text())["datasources"]]
    assert [d["uid"] for d in sources] == [DATASOURCE_UID]
    assert sources[0]["url"] == "http://prometheus:9090" and sources[0]["type"] == "prometheus"
    prov_files = list((MON / "grafana" / "provisioning" / "dashboards").glob("*.yml"))
    providers = [p for f in prov_files for p in yaml.safe_load(f.read_text())["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"


def test_dashboards_are_well_formed() -> None:
    assert {f.name for f in DASHBOARDS} == {"federation.json", "device.json"}
    uids = set()
    for f in DASHBOARDS:
        board = json.loads(f.read_text())
        uids.add(board["uid"])
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{f.name}: duplicate panel ids"
        for p in panels(board):
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{f.name} / {p['title']}: off the grid"
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == DATASOURCE_UID, p["title"]
            assert p.get("description"), f"{f.name} / {p['title']}: say what the panel answers"
            for target in p["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID
    assert len(uids) == len(DASHBOARDS)
    device = json.loads((MON / "grafana" / "dashboards" / "device.json").read_text())
    assert [v["name"] for v in device["templating"]["list"]] == ["device"]
    for p in panels(device):
        for target in p.get("targets", []):
            assert "$device" in target["expr"], f"device.json / {p['title']} ignores $device"
    assert any(p["type"] == "heatmap" for p in panels(device))


def test_docs_list_every_metric_and_alert() -> None:
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    assert tcat.catalogue_markdown() in doc, "docs/monitoring.md: paste `python -m iotad.telemetry` output"
    for r in rules():
        if "alert" in r:
            assert r["alert"] in doc


# --------------------------------------------------------------------------------------------------
# A real Prometheus (this config and rules, 1 s scrapes) scrapes iotad exporters; every dashboard
# query must return data and every rule expression must evaluate.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _query(base: str, expr: str) -> Any:
    return _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")


@pytest.fixture()
def exporters() -> Iterator[dict[str, int]]:
    servers = []
    agg_reg = texp.make_registry()
    agg = tfed.AggregatorTelemetry(agg_reg)
    # A fresh run, never resumed (the common case): series with known label values must exist anyway.
    agg.run_started(planned_rounds=3)
    for rnd, thr in ((1, 0.04), (2, 0.03)):
        agg.phase_entered(rnd, "train")
        agg.round_finished(seconds=4.0, participating=2, failed={"missing": 1}, train_loss=0.1 / rnd,
                           model_bytes=60_000)
        agg.evaluated({"precision": 0.9, "recall": 0.8, "f1": 0.85, "fpr": 0.01, "roc_auc": 0.95,
                       "pr_auc": 0.9, "threshold": thr, "per_attack_recall": {"DDoS_UDP": 1.0, "MITM": 0.4}})
    servers.append(texp.serve_metrics(0, "127.0.0.1", registry=agg_reg))
    rng = np.random.default_rng(0)
    for k in (1, 2):
        reg = texp.make_registry()
        dev = tdev.DeviceTelemetry(f"device-{k}", reg)
        dev.prime(reject_reasons=("shifted", "non_numeric"))
        dev.clientapp_started(seconds=2.5)
        dev.trained(loss=0.02, samples=1000, epochs=2, seconds=3.0)
        dev.evaluated(seconds=1.0)
        dev.model_loaded(model_round=2, threshold=0.03)
        scores = 10 ** rng.uniform(-5, 0, 200)
        dev.scored(scores, scores > 0.03, seconds=0.01, attack_types=["Normal", "MITM"] * 100)
        dev.rejected({"shifted": 2})
        dev.windows(evicted=3, tracked=120, clamped=1, bad_time=1)
        servers.append(texp.serve_metrics(0, "127.0.0.1", registry=reg))
    try:
        yield {"aggregator": servers[0].port, "device-1": servers[1].port, "device-2": servers[2].port}
    finally:
        for s in servers:
            s.close()


@pytest.mark.integration
def test_live_prometheus_answers_every_query(tmp_path: Path, exporters: dict[str, int]) -> None:
    binary = tool("prometheus")
    work = tmp_path / "prom"
    shutil.copytree(MON, work, ignore=shutil.ignore_patterns("grafana", "*.json"))
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    port = _free_port()
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        for sd in job.get("file_sd_configs", []):
            sd["refresh_interval"] = "1s"
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    targets = work / "targets"
    agg_target = [{"targets": [f"127.0.0.1:{exporters['aggregator']}"]}]
    (targets / "aggregator.json").write_text(json.dumps(agg_target))
    for name in ("device-1", "device-2"):
        (targets / f"{name}.json").write_text(
            json.dumps([{"targets": [f"127.0.0.1:{exporters[name]}"], "labels": {"device": name}}]))

    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        # Ready once every target has 4+ scrapes: enough for rate() over short windows.
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                res = _query(base, 'min(count_over_time(up{job=~"iotad-.*"}[1m])) >= 4 '
                                   'and count(up{job=~"iotad-.*"} == 1) == 3')
                if res["data"]["result"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the exporters"
            time.sleep(0.5)

        devices = _get(f"{base}/api/v1/label/device/values?match[]=iotad_edge_scored_flows_total")["data"]
        assert devices == ["device-1", "device-2"]
        up = _query(base, 'up{job="iotad-devices"}')["data"]["result"]
        assert sorted(r["metric"]["device"] for r in up) == ["device-1", "device-2"]
        # honor_labels: a device's own `device` label is not renamed.
        assert not _query(base, '{exported_device!=""}')["data"]["result"]

        subst = {"$__rate_interval": "4s", "$__range": "1m", "$device": ".+"}
        empty = []
        for board, title, expr in dashboard_queries():
            if expr.startswith("label_values("):
                continue
            for k, v in subst.items():
                expr = expr.replace(k, v)
            res = _query(base, expr)
            assert res["status"] == "success", (board, title, expr, res)
            if not res["data"]["result"]:
                empty.append(f"{board} / {title}: {expr}")
        assert not empty, "queries without data:\n" + "\n".join(empty)
        for r in rules():
            assert _query(base, r["expr"])["status"] == "success", r["expr"]
        loaded = _get(f"{base}/api/v1/rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in loaded) == len(rules())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
