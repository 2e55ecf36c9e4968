"""Metric names, recording helpers, multiprocess union and the /metrics server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from iotad.telemetry import catalogue as tcat
from iotad.telemetry import device as tdev
from iotad.telemetry import exporter as texp
from iotad.telemetry import federation as tfed
from iotad.telemetry import spec as tspec

NAME_RE = re.compile(r"^iotad_(fl|edge)_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
FORBIDDEN_LABELS = {"round", "server_round", "ip", "instance_ip", "flow", "flow_id", "node_id", "pid"}


@pytest.mark.parametrize("spec", tcat.catalogue(), ids=lambda s: s.name)
def test_name_follows_convention(spec: tspec.MetricSpec) -> None:
    assert NAME_RE.match(spec.name), spec.name
    assert spec.name.split("_")[1] == spec.subsystem in {"fl", "edge"}
    assert spec.name.endswith("_total") == (spec.kind == "counter")
    tokens = spec.name.removesuffix("_total").split("_")
    assert len(tokens) >= 4, f"{spec.name}: needs a quantity and a unit"
    assert tokens[-1] in tspec.UNITS, f"{spec.name}: unit {tokens[-1]!r} not in {sorted(tspec.UNITS)}"
    assert set(spec.labels) <= tspec.ALLOWED_LABELS
    assert not set(spec.labels) & FORBIDDEN_LABELS
    assert ("device" in spec.labels) == (spec.subsystem == "edge")
    assert (spec.mode is not None) == (spec.kind == "gauge")
    assert (spec.buckets is not None) == (spec.kind == "histogram")
    if spec.buckets:
        assert list(spec.buckets) == sorted(set(spec.buckets))
    if spec.name.endswith("_seconds") and spec.kind == "histogram":
        assert spec.buckets and spec.buckets[0] > 0


def test_catalogue_is_unique_and_matches_attributes() -> None:
    names = [s.name for s in tcat.catalogue()]
    assert len(names) == len(set(names))
    for cls in (tfed.FLMetrics, tdev.EdgeMetrics):
        assert {s.attr for s in cls._specs} == set(cls.__annotations__)


def test_state_gauges_survive_dead_processes() -> None:
    # Values written by a ClientApp that already exited must still be served.
    for s in tcat.catalogue():
        if s.kind == "gauge" and s.name != "iotad_fl_active_runs":
            assert s.mode is not None and not s.mode.startswith("live"), s.name


def test_registered_families_match_catalogue() -> None:
    reg = texp.make_registry()
    tfed.fl_metrics(reg)
    tdev.edge_metrics(reg)
    families = {m.name: m for m in reg.collect()}
    for s in tcat.catalogue():
        fam = families[s.name.removesuffix("_total")]
        assert fam.type == s.kind
    assert tfed.fl_metrics(reg) is tfed.fl_metrics(reg)  # registering twice would raise


def test_score_buckets_cover_reconstruction_errors() -> None:
    b = tspec.SCORE_BUCKETS
    assert b[0] <= 1e-6 and b[-1] >= 1e2
    ratios = np.diff(np.log10(b))
    assert np.allclose(ratios, 0.25, atol=0.01)  # log-spaced


def test_device_telemetry_records() -> None:
    reg = texp.make_registry()
    dev = tdev.DeviceTelemetry("dev-a", reg)
    dev.prime(reject_reasons=("shifted",))
    labels = {"device": "dev-a"}
    assert reg.get_sample_value("iotad_edge_scored_flows_total", labels) == 0
    assert reg.get_sample_value("iotad_edge_rejected_rows_total", {**labels, "reason": "shifted"}) == 0

    dev.trained(loss=0.25, samples=100, epochs=2, seconds=1.5)
    dev.trained(loss=0.125, samples=100, epochs=2, seconds=0.5)
    dev.evaluated(seconds=0.2)
    dev.clientapp_started(seconds=3.0)
    dev.model_loaded(model_round=4, threshold=0.02)
    dev.scored(
        np.array([1e-5, 0.5, 0.01, np.nan]),
        np.array([0, 1, 0, 1]),
        seconds=0.003,
        attack_types=["Normal", "DDoS_UDP", "Normal", ""],
    )
    dev.rejected({"shifted": 3, "non_numeric": 0})

    g = reg.get_sample_value
    assert g("iotad_edge_train_loss", labels) == 0.125
    assert g("iotad_edge_train_samples_total", labels) == 200
    assert g("iotad_edge_train_epochs_total", labels) == 4
    assert g("iotad_edge_task_duration_seconds_count", {**labels, "phase": "train"}) == 2
    assert g("iotad_edge_task_duration_seconds_sum", {**labels, "phase": "train"}) == 2.0
    assert g("iotad_edge_task_duration_seconds_count", {**labels, "phase": "evaluate"}) == 1
    assert g("iotad_edge_clientapp_startup_seconds_count", labels) == 1
    assert g("iotad_edge_model_round", labels) == 4
    assert g("iotad_edge_threshold_score", labels) == 0.02
    assert g("iotad_edge_model_reloads_total", labels) == 1
    assert g("iotad_edge_scored_flows_total", labels) == 4
    assert g("iotad_edge_anomalous_flows_total", labels) == 2
    assert g("iotad_edge_anomaly_score_count", labels) == 3  # NaN skipped
    assert g("iotad_edge_detection_latency_seconds_count", labels) == 1
    assert g("iotad_edge_labelled_flows_total", {**labels, "attack_type": "Normal"}) == 2
    assert g("iotad_edge_labelled_anomalous_flows_total", {**labels, "attack_type": "Normal"}) == 0
    assert g("iotad_edge_labelled_anomalous_flows_total", {**labels, "attack_type": "DDoS_UDP"}) == 1
    assert g("iotad_edge_labelled_flows_total", {**labels, "attack_type": ""}) is None
    assert g("iotad_edge_rejected_rows_total", {**labels, "reason": "shifted"}) == 3
    assert g("iotad_edge_rejected_rows_total", {**labels, "reason": "non_numeric"}) is None
    # Attack types come from the data (any name is kept): the label's values stay bounded.
    from iotad.telemetry.spec import MAX_ATTACK_TYPES

    names = [f"type-{k}" for k in range(MAX_ATTACK_TYPES + 10)]
    dev.scored(np.zeros(len(names)), np.ones(len(names)), seconds=0.001, attack_types=names)
    series = {s.labels["attack_type"] for m in reg.collect() if m.name == "iotad_edge_labelled_flows"
              for s in m.samples if s.name.endswith("_total")}
    assert len(series) == MAX_ATTACK_TYPES + 1 and "other" in series and "DDoS_UDP" in series
    assert g("iotad_edge_labelled_flows_total", {**labels, "attack_type": "other"}) == 12  # 42 names, 30 places left
    # A device never writes aggregator series.
    assert not [m for m in reg.collect() if m.name.startswith("iotad_fl_")]


def test_observe_many_equals_observe() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([10 ** rng.uniform(-8, 3, 500), tspec.SCORE_BUCKETS, [np.inf, -np.inf, np.nan]])
    ra, rb = texp.make_registry(), texp.make_registry()
    ha = Histogram("h", "x", buckets=tspec.SCORE_BUCKETS, registry=ra)
    hb = Histogram("h", "x", buckets=tspec.SCORE_BUCKETS, registry=rb)
    tspec.observe_many(ha, v)
    for x in v[np.isfinite(v)]:
        hb.observe(float(x))
    sa = {
        (s.name, s.labels.get("le")): s.value
        for m in ra.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }
    sb = {
        (s.name, s.labels.get("le")): s.value
        for m in rb.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == pytest.approx(sb[k]), k


def test_aggregator_telemetry_records() -> None:
    reg = texp.make_registry()
    agg = tfed.AggregatorTelemetry(reg)
    before = time.time()
    agg.run_started(planned_rounds=5)
    agg.run_started(planned_rounds=5, resumed_reason="superlink_restart")
    agg.round_started(1)
    agg.round_finished(
        seconds=12.0, participating=3, failed={"missing": 1}, train_loss=0.05, model_bytes=4096
    )
    agg.evaluated(
        {
            "precision": 0.9,
            "recall": 0.8,
            "f1": 0.85,
            "fpr": 0.01,
            "roc_auc": 0.97,
            "pr_auc": 0.93,
            "threshold": 0.02,
            "accuracy": 0.95,
            "per_attack_recall": {"DDoS_UDP": 1.0, "MITM": 0.5},
        }
    )
    g = reg.get_sample_value
    assert g("iotad_fl_started_runs_total") == 1
    assert g("iotad_fl_resumed_runs_total", {"reason": "superlink_restart"}) == 1
    assert g("iotad_fl_planned_rounds") == 5
    assert g("iotad_fl_active_runs") == 1
    assert g("iotad_fl_current_round") == 1
    assert g("iotad_fl_completed_rounds_total") == 1
    assert g("iotad_fl_round_duration_seconds_sum") == 12.0
    assert g("iotad_fl_last_round_duration_seconds") == 12.0
    assert g("iotad_fl_round_participating_devices") == 3
    assert g("iotad_fl_round_failed_devices") == 1
    assert g("iotad_fl_failed_devices_total", {"reason": "missing"}) == 1
    assert g("iotad_fl_train_loss") == 0.05
    assert g("iotad_fl_model_size_bytes") == 4096
    assert g("iotad_fl_f1_ratio") == 0.85
    assert g("iotad_fl_fpr_ratio") == 0.01
    assert g("iotad_fl_pr_auc_ratio") == 0.93
    assert g("iotad_fl_threshold_score") == 0.02
    assert g("iotad_fl_attack_recall_ratio", {"attack_type": "MITM"}) == 0.5
    assert g("iotad_fl_failed_devices_total", {"reason": "error"}) == 0  # primed for increase()
    assert g("iotad_fl_threshold_change_ratio") == 0  # no previous round yet
    agg.evaluated({"threshold": 0.03})
    assert g("iotad_fl_threshold_change_ratio") == pytest.approx(0.5)
    assert (g("iotad_fl_last_round_timestamp_seconds") or 0) >= before
    agg.run_finished()
    assert g("iotad_fl_active_runs") == 0
    assert not [m for m in reg.collect() if m.name.startswith("iotad_edge_")]


def test_serve_metrics_in_memory() -> None:
    reg = texp.make_registry()
    tdev.DeviceTelemetry("dev-s", reg).model_loaded(model_round=2, threshold=0.5)
    server = texp.serve_metrics(0, "127.0.0.1", registry=reg)
    try:
        assert server.port > 0
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
    finally:
        server.close()
    assert 'iotad_edge_model_round{device="dev-s"} 2.0' in body


def test_configure_multiprocess_refuses_after_metrics_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tdev.edge_metrics(texp.make_registry())  # this process now has in-memory metrics
    monkeypatch.delenv(texp.MULTIPROC_ENV, raising=False)
    assert texp.configure_multiprocess() is None
    monkeypatch.setenv(texp.MULTIPROC_ENV, str(tmp_path))
    assert not texp.multiprocess_enabled()
    with pytest.raises(RuntimeError):
        texp.configure_multiprocess()


def test_prepare_multiproc_dir_wipes(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    texp.prepare_multiproc_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_process_age_is_plausible() -> None:
    age = tdev.process_age_seconds()
    if sys.platform.startswith("linux"):
        assert age is not None and age >= 0


def test_markdown_catalogue_lists_everything() -> None:
    md = tcat.catalogue_markdown()
    for s in tcat.catalogue():
        assert f"`{s.name}`" in md


# --------------------------------------------------------------------------------------------------
# Multiprocess: ClientApp-like children write, an agent-like process serves the union.

CLIENTAPP = textwrap.dedent(
    """
    import sys, json
    from iotad.telemetry import device as tdev
    loss, samples = float(sys.argv[1]), int(sys.argv[2])
    dev = tdev.DeviceTelemetry("dev-m")
    dev.clientapp_started()  # measured from /proc, once per process
    dev.clientapp_started()
    dev.trained(loss=loss, samples=samples, epochs=1, seconds=0.5)
    """
)

AGENT = textwrap.dedent(
    """
    import sys, time
    from iotad.telemetry import device as tdev, exporter as texp, federation as tfed
    texp.configure_multiprocess(sys.argv[1])
    agg = tfed.AggregatorTelemetry()           # livesum gauge written by a live process
    agg.run_started(planned_rounds=3)
    dev = tdev.DeviceTelemetry("dev-m")
    dev.prime()
    dev.model_loaded(model_round=7, threshold=0.03)
    dev.scored([0.001, 0.2], [0, 1], seconds=0.01)
    server = texp.serve_metrics(0, "127.0.0.1")
    print(server.port, flush=True)
    sys.stdin.readline()
    """
)


def _run(code: str, *args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, timeout=60)


def test_multiprocess_union_of_dead_clientapps_and_live_agent(tmp_path: Path) -> None:
    mp = texp.prepare_multiproc_dir(tmp_path / "mp")
    env = {**os.environ, texp.MULTIPROC_ENV: str(mp)}
    _run(CLIENTAPP, "0.5", "10", env=env)
    time.sleep(0.01)  # mostrecent compares wall-clock stamps
    _run(CLIENTAPP, "0.25", "30", env=env)
    assert len(list(mp.glob("counter_*.db"))) == 2  # one file per (dead) ClientApp

    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(mp))
    labels = {"device": "dev-m"}
    assert reg.get_sample_value("iotad_edge_train_loss", labels) == 0.25  # latest writer wins
    assert reg.get_sample_value("iotad_edge_train_samples_total", labels) == 40  # summed
    assert reg.get_sample_value("iotad_edge_clientapp_startup_seconds_count", labels) == 2

    # An agent in the same directory serves everything once, its own values included.
    env_agent = {k: v for k, v in os.environ.items() if k != texp.MULTIPROC_ENV}
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(mp)],
        env=env_agent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None and agent.stdin is not None
        port = int(agent.stdout.readline())
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(body)}
        samples = {
            (s.name, json.dumps(s.labels, sort_keys=True)): s.value
            for f in families.values()
            for s in f.samples
        }
        assert len(samples) == sum(len(f.samples) for f in families.values())  # no duplicate series
        dm = json.dumps(labels)
        assert samples[("iotad_edge_train_loss", dm)] == 0.25
        assert samples[("iotad_edge_train_samples_total", dm)] == 40
        assert samples[("iotad_edge_model_round", dm)] == 7
        assert samples[("iotad_edge_scored_flows_total", dm)] == 2
        assert samples[("iotad_edge_anomalous_flows_total", dm)] == 1
        assert samples[("iotad_fl_active_runs", "{}")] == 1
        agent.stdin.write("\n")
        agent.stdin.flush()
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    # After the launcher-like process died, its live gauge disappears at the next collection.
    reg2 = CollectorRegistry()
    texp._ReapingCollector(reg2, path=str(mp))
    assert reg2.get_sample_value("iotad_fl_active_runs") is None
    assert reg2.get_sample_value("iotad_edge_model_round", labels) == 7  # mostrecent survives
