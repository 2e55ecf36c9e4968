"""The shipped monitoring against a real federation: Debian's Prometheus scrapes `iotad local-federation`.

One module-scoped stack (about 2-3 minutes on a loaded 2-core box, all of it on 127.0.0.1):

* a Prometheus (the `prometheus` binary of Debian's package, a free port, a temporary TSDB) runs a
  config derived from monitoring/prometheus.yml: 2 s scrapes, 1 s rule evaluation, no DNS discovery
  (nothing but 127.0.0.1 is contacted), file_sd pointed at the federation's ``targets/`` directory,
  and monitoring/rules with one test override (:func:`shortened_rules`);
* ``iotad local-federation --keep-running``: 2 devices, 2 rounds, 1500 synthetic rows per device.

Prometheus starts first, so it scrapes the whole training (rate() over ClientApp and round
histograms needs samples before and after). Then every PromQL expression of the Grafana dashboards
must return data, every alert rule must evaluate (and, on this healthy stack, only the anomaly-spike
rule may be true: the labelled replay contains attacks), and an attack burst (``SIGUSR1`` to one
device agent) must make ``IotadAnomalyRateSpike`` pending or firing for that device.

Every wait is bounded. The launcher is SIGTERMed at the end (also on failure) and every process
carrying the stack's environment marker is killed; Prometheus is terminated.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from iotad.deploy.processes import free_port
from tests.integration.test_local_federation import Stack, local_stack, marked_pids

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
CONFIG = MON / "prometheus.yml"
RULES = MON / "rules" / "iotad.rules.yml"
DASHBOARDS = sorted((MON / "grafana" / "dashboards").glob("*.json"))

DEVICES = ("device-0", "device-1")
SCRAPE_S = 2
# Grafana's built-in variables, as Grafana would expand them for a panel over the last 5 minutes with
# this scrape interval ($__rate_interval: max($__interval + scrape, 4 x scrape), widened to 5 scrapes so
# a late scrape on a loaded box cannot leave a window with a single sample).
GRAFANA_VARS = {"__interval": f"{SCRAPE_S}s", "__rate_interval": f"{5 * SCRAPE_S}s", "__range": "5m"}
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")

# IotadAnomalyRateSpike as shipped judges 5 minutes of traffic and must hold for 2 minutes. The test
# copy keeps its expression, threshold and labels and only shortens every range window to SPIKE_WINDOW
# and `for` to SPIKE_FOR (regex `\[\d+[smhd]\]` -> [20s]), so a burst of a few seconds trips it.
SPIKE = "IotadAnomalyRateSpike"
SPIKE_WINDOW = "20s"
SPIKE_FOR = "4s"
BURST_SIGNALS = 4  # SIGUSR1s; the agent replays 500 attack rows per signal (iotad/edge/agent.py)
# On a healthy federation only the spike rule may hold: labelled replay carries ~25% attack rows.
MAY_HOLD_WHEN_HEALTHY = {SPIKE}


def shortened_rules(doc: dict[str, Any]) -> dict[str, Any]:
    """The shipped rule document with IotadAnomalyRateSpike's windows and `for` shortened."""
    out = copy.deepcopy(doc)
    found = 0
    for group in out["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == SPIKE:
                rule["expr"], n = re.subn(r"\[\d+[smhd]\]", f"[{SPIKE_WINDOW}]", rule["expr"])
                assert n >= 2, f"{SPIKE}: expected range windows in {rule['expr']}"
                rule["for"] = SPIKE_FOR
                found += 1
    assert found == 1, f"{SPIKE} not found in {RULES}"
    return out


def prometheus_config(targets: Path, port: int) -> dict[str, Any]:
    """monitoring/prometheus.yml with test intervals, file_sd only (at ``targets``), self-scrape on ``port``."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["global"].update(scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s", evaluation_interval="1s")
    assert cfg["rule_files"] == ["rules/*.rules.yml"]
    for job in cfg["scrape_configs"]:
        job.pop("dns_sd_configs", None)  # 127.0.0.1 only: no lookups of `aggregator` / `device`
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(targets / Path(f).name) for f in sd["files"]]
            sd["refresh_interval"] = "1s"
    assert {j["job_name"] for j in cfg["scrape_configs"]} == {"iotad-aggregator", "iotad-devices", "prometheus"}
    return cfg


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package "
                    "(`apt-get install -y --no-install-recommends prometheus`, scripts/setup.sh)")
    return path


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every panel target (rows' nested panels included)."""
    out = []
    for f in DASHBOARDS:
        board = json.loads(f.read_text())
        for panel in board["panels"]:
            for p in (panel, *panel.get("panels", [])):
                for target in p.get("targets", []):
                    out.append((f.name, p["title"], target["expr"]))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard, variable name, query) of every query variable."""
    out = []
    for f in DASHBOARDS:
        for var in json.loads(f.read_text()).get("templating", {}).get("list", []):
            q = var.get("query")
            out.append((f.name, var["name"], q["query"] if isinstance(q, dict) else q))
    return out


def expand(expr: str, values: dict[str, str]) -> str:
    """Replace $var, ${var[:fmt]} and [[var]]; an unknown variable is an error (no silent leftovers)."""

    def sub(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        assert name in values, f"Grafana variable ${name} has no test value in: {expr}"
        return values[name]

    return VAR_RE.sub(sub, expr)


# --------------------------------------------------------------------------------------------------
# Prometheus HTTP API


@dataclass
class Prom:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.base}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: a bad expression; the body says why
            return json.loads(e.read())

    def query(self, expr: str) -> Any:
        return self.get("/api/v1/query", query=expr)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        res = self.query(expr)
        assert res["status"] == "success", (expr, res)
        return list(res["data"]["result"])

    def value(self, expr: str) -> float | None:
        rows = self.vector(expr)
        return float(rows[0]["value"][1]) if rows else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@dataclass
class Live:
    stack: Stack
    prom: Prom
    started: float


def wait_until(what: str, cond: Any, timeout: float, live: Live | None = None, prom: Prom | None = None,
               poll: float = 1.0) -> Any:
    """Poll ``cond()`` until truthy (returns it); fail after ``timeout`` s or when a process died."""
    deadline = time.monotonic() + timeout
    while True:
        if prom is not None and prom.proc.poll() is not None:
            pytest.fail(f"prometheus exited ({prom.proc.returncode}) waiting for {what}:\n{prom.tail()}")
        if live is not None and live.stack.proc.poll() is not None:
            pytest.fail(f"launcher exited waiting for {what}:\n{live.stack.output()[-3000:]}")
        with contextlib.suppress(OSError):
            got = cond()
            if got:
                return got
        if time.monotonic() > deadline:
            extra = f"\n{live.stack.output()[-2000:]}\n{live.stack.logs_tail()}" if live else ""
            pytest.fail(f"no {what} after {timeout:.0f}s{extra}\nprometheus:\n{prom.tail() if prom else ''}")
        time.sleep(poll)


@contextlib.contextmanager
def prometheus(workdir: Path, targets: Path) -> Iterator[Prom]:
    binary = tool("prometheus")
    port = free_port()
    conf_dir = workdir / "config"
    (conf_dir / "rules").mkdir(parents=True)
    (conf_dir / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(targets, port), sort_keys=False))
    (conf_dir / "rules" / "iotad.rules.yml").write_text(
        yaml.safe_dump(shortened_rules(yaml.safe_load(RULES.read_text())), sort_keys=False))
    check = subprocess.run([tool("promtool"), "check", "config", str(conf_dir / "prometheus.yml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={conf_dir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    prom = Prom(f"http://127.0.0.1:{port}", proc, log)
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=5) as r:
                return r.status == 200

        wait_until("ready Prometheus", ready, 60, prom=prom, poll=0.3)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("monitoring-live")
    workdir = root / "federation"
    (workdir / "targets").mkdir(parents=True)  # the launcher fills it; Prometheus watches it from the start
    with prometheus(root / "prometheus", workdir / "targets") as prom, \
            local_stack(workdir, "--devices", str(len(DEVICES)), "--rounds", "2", "--rows-per-device", "1500",
                        "--local-epochs", "1", "--rate", "50") as stack:
        lv = Live(stack, prom, t0)
        status = stack.wait_trained(timeout=300)
        assert status["state"] == "completed" and status["completed_rounds"] == 2, status
        trained = time.monotonic() - t0

        def scraped() -> bool:
            # Every target up, and each device scoring with the round-2 model in Prometheus' view.
            return bool(
                prom.vector('count(up{job=~"iotad-.*"} == 1) == 3')
                and prom.vector('count(min by (device) (iotad_edge_model_round) == 2) == 2')
                and prom.vector(f'count(sum by (device) (rate(iotad_edge_scored_flows_total[{5 * SCRAPE_S}s])) > 0)'
                                ' == 2'))

        wait_until("scrapes of the trained federation", scraped, 90, live=lv, prom=prom)
        print(f"\nfederation trained in {trained:.0f}s, scraped after {time.monotonic() - t0:.0f}s")
        yield lv
    print(f"\nmonitoring live stack: {time.monotonic() - t0:.0f}s in all")


# --------------------------------------------------------------------------------------------------


def test_every_dashboard_query_returns_data(live: Live) -> None:
    prom = live.prom
    devices = sorted(live.stack.endpoints()["devices"])
    assert devices == list(DEVICES)
    for board, name, query in variable_queries():
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m, f"{board} ${name}: only label_values(metric, label) variables are supported here: {query}"
        got = prom.get(f"/api/v1/label/{m[2]}/values", **{"match[]": m[1]})["data"]
        assert got == devices, f"{board} ${name}: {got}"
    # honor_labels on the device job: the device's own `device` label is not renamed.
    assert not prom.vector('{exported_device!=""}')

    empty, checked = [], 0
    for board, title, expr in dashboard_queries():
        # `$device` as Grafana sends it: each single device, and All (allValue `.+`).
        choices = [*devices, ".+"] if "$device" in expr else [""]
        for device in choices:
            q = expand(expr, {**GRAFANA_VARS, "device": device})
            res = prom.query(q)
            assert res["status"] == "success", (board, title, q, res)
            checked += 1
            if not res["data"]["result"]:
                empty.append(f"{board} / {title}: {q}")
    assert not empty, "dashboard queries without data from a real federation:\n" + "\n".join(empty)
    print(f"\n{checked} dashboard queries ({len(dashboard_queries())} expressions) returned data")


def test_every_alert_rule_evaluates(live: Live) -> None:
    prom = live.prom
    shipped = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    holding = []
    for rule in shipped:
        rows = prom.vector(rule["expr"])  # evaluates without error
        if rows:
            holding.append(rule["alert"])
    unexpected = set(holding) - MAY_HOLD_WHEN_HEALTHY
    assert not unexpected, f"alerts true on a healthy federation: {unexpected}"

    def evaluated() -> list[dict[str, Any]] | None:
        loaded = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return loaded if all(r["health"] != "unknown" for r in loaded) else None

    loaded = wait_until("evaluated rules", evaluated, 30, live=live, prom=prom)
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in shipped)
    bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad, bad
    print(f"\n{len(shipped)} alert rules evaluate; true on the healthy stack: {holding or 'none'}")


def agent_pid(stack: Stack, device: str) -> int:
    """The ``iotad agent --device <device>`` process of this stack (found by the stack's env marker)."""
    found = []
    for pid in marked_pids(stack.mark):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "agent" in argv and "--device" in argv and argv[argv.index("--device") + 1] == device:
            found.append(pid)
    assert len(found) == 1, f"agent processes of {device}: {found}"
    return found[0]


def test_attack_burst_raises_anomaly_spike_alert(live: Live) -> None:
    prom, stack = live.prom, live.stack
    ratio = (f"sum by (device) (rate(iotad_edge_anomalous_flows_total[{SPIKE_WINDOW}]))"
             f" / sum by (device) (rate(iotad_edge_scored_flows_total[{SPIKE_WINDOW}]))")
    before = {r["metric"]["device"]: float(r["value"][1]) for r in prom.vector(ratio)}
    assert sorted(before) == list(DEVICES), before
    # Preferably a device whose alert is inactive now (the replay's own attacks may already trip it),
    # the one with the lowest anomaly rate among those: the burst has the most to prove there.
    states = {a["labels"].get("device"): a["state"] for a in prom.alerts(SPIKE)}
    quiet = [d for d in before if d not in states]
    target = min(quiet or before, key=lambda d: before[d])
    active_before = states.get(target, "inactive")
    scored = f'sum(iotad_edge_scored_flows_total{{device="{target}"}})'
    scored_before = prom.value(scored) or 0.0

    pid = agent_pid(stack, target)
    for _ in range(BURST_SIGNALS):
        os.kill(pid, signal.SIGUSR1)  # one pending signal at a time: standard signals do not queue
        time.sleep(0.3)
    t_burst = time.monotonic()

    # The burst reached the detector (500 attack rows per signal on top of the paced replay) ...
    wait_until(f"{target} scoring the burst",
               lambda: (prom.value(scored) or 0.0) >= scored_before + 500 * BURST_SIGNALS, 30, live=live, prom=prom)
    # ... and some of its attack rows were flagged.
    flagged = (f'sum(increase(iotad_edge_labelled_anomalous_flows_total{{device="{target}", '
               f'attack_type!="Normal"}}[{SPIKE_WINDOW}]))')
    wait_until(f"flagged burst rows on {target}", lambda: (prom.value(flagged) or 0.0) > 0, 30, live=live, prom=prom)

    def spiking() -> dict[str, Any] | None:
        for a in prom.alerts(SPIKE):
            if a["labels"].get("device") == target and a["state"] in ("pending", "firing"):
                return a
        return None

    alert = wait_until(f"{SPIKE} for {target}", spiking, 60, live=live, prom=prom)
    value = float(alert["value"])
    assert value > 0.05 and value > before[target], (alert, before)
    assert alert["labels"]["severity"] == "warning" and target in alert["annotations"]["summary"]
    print(f"\n{SPIKE} {alert['state']} for {target} {time.monotonic() - t_burst:.1f}s after the burst: "
          f"anomaly rate {before[target]:.3f} -> {value:.3f} (alert state before: {active_before})")
