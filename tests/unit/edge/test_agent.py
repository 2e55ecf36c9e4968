"""Device agent: hot reload, replay, tail -F semantics, bad rows, metrics (fresh registry and a scrape)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from iotad.core.detector import Detector, detector_from_weights
from iotad.core.model import Autoencoder
from iotad.core.preprocessing import FeatureStats, Scaler
from iotad.core.train import get_weights
from iotad.data.loader import load_traffic
from iotad.data.schema import FEATURE_NAMES, RAW_COLUMNS
from iotad.data.synthetic import write_synthetic
from iotad.edge.agent import Agent, encode_block
from iotad.edge.inference import NumpyDetector
from iotad.edge.reload import BundleWatcher
from iotad.edge.sources import RawBlock, ReplaySource
from iotad.edge.tail import TailSource
from iotad.telemetry import device as tdev
from iotad.telemetry import exporter as texp

DEVICE = "dev-test"


@pytest.fixture(scope="module")
def traffic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agent-data")
    return write_synthetic(out, 1, 600, seed=3)[0]


@pytest.fixture(scope="module")
def scaler(traffic_csv: Path) -> Scaler:
    tr = load_traffic([traffic_csv])
    return Scaler.from_stats(FeatureStats.of(tr.features[tr.labels == 0]))


def save_bundle(model_dir: Path, scaler: Scaler, rnd: int, threshold: float = 0.01) -> None:
    weights = get_weights(Autoencoder(len(FEATURE_NAMES)))
    detector_from_weights(weights, scaler, threshold, round=rnd, feature_names=FEATURE_NAMES).save(model_dir)


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, {"device": DEVICE, **labels})
    return 0.0 if v is None else v


def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def registry() -> CollectorRegistry:
    return texp.make_registry()


@pytest.fixture
def running() -> Iterator[Callable[[Agent], threading.Thread]]:
    agents: list[tuple[Agent, threading.Thread]] = []

    def start(agent: Agent) -> threading.Thread:
        th = threading.Thread(target=agent.run, daemon=True)
        th.start()
        agents.append((agent, th))
        return th

    yield start
    for agent, th in agents:
        agent.stop()
        th.join(10)


def test_agent_waits_for_bundle_then_hot_reloads(
    tmp_path: Path, traffic_csv: Path, scaler: Scaler, registry: CollectorRegistry,
    running: Callable[[Agent], threading.Thread],
) -> None:
    model_dir = tmp_path / "model"
    agent = Agent(ReplaySource(traffic_csv, rate=0), model_dir, tdev.DeviceTelemetry(DEVICE, registry),
                  batch_size=64, poll_interval=0.05)
    running(agent)
    time.sleep(0.3)
    assert value(registry, "iotad_edge_scored_flows_total") == 0  # no model yet: waits, no crash
    assert value(registry, "iotad_edge_model_round") == 0

    save_bundle(model_dir, scaler, 1, threshold=0.02)
    wait_until(lambda: value(registry, "iotad_edge_scored_flows_total") > 0)
    assert value(registry, "iotad_edge_model_round") == 1
    assert value(registry, "iotad_edge_threshold_score") == pytest.approx(0.02)

    scored_before = value(registry, "iotad_edge_scored_flows_total")
    save_bundle(model_dir, scaler, 2, threshold=0.03)  # atomic swap under a running agent
    wait_until(lambda: value(registry, "iotad_edge_model_round") == 2)
    assert value(registry, "iotad_edge_threshold_score") == pytest.approx(0.03)
    assert value(registry, "iotad_edge_model_reloads_total") == 2
    wait_until(lambda: value(registry, "iotad_edge_scored_flows_total") > scored_before)
    # Labelled replay: true types are counted, latency observed per batch.
    assert value(registry, "iotad_edge_labelled_flows_total", attack_type="Normal") > 0
    assert value(registry, "iotad_edge_detection_latency_seconds_count") >= 2
    assert value(registry, "iotad_edge_anomaly_score_count") == value(registry, "iotad_edge_scored_flows_total")


def test_broken_bundle_keeps_old_model(tmp_path: Path, scaler: Scaler) -> None:
    model_dir = tmp_path / "model"
    watcher = BundleWatcher(model_dir)
    assert watcher.check() is None  # missing: nothing, no error
    save_bundle(model_dir, scaler, 1)
    det = watcher.check()
    assert det is not None and det.round == 1
    assert isinstance(det, NumpyDetector)  # the agent scores without torch
    assert watcher.check() is None  # unchanged: no reload
    (model_dir / "bundle.json").write_text("{not json")
    assert watcher.check() is None  # broken: ignored, once
    save_bundle(model_dir, scaler, 3)
    det = watcher.check()
    assert det is not None and det.round == 3


def test_agent_scores_alike_with_the_torch_loader(tmp_path: Path, traffic_csv: Path, scaler: Scaler) -> None:
    """The loader is pluggable (benchmarks compare the torch Detector): same rows, same scores."""
    model_dir = tmp_path / "model"
    save_bundle(model_dir, scaler, 1)
    block = ReplaySource(traffic_csv, rate=0).read(300)
    assert block is not None
    scores = {}
    for name, loader in {"numpy": None, "torch": lambda d: Detector.load(d, feature_names=FEATURE_NAMES)}.items():
        kwargs = {} if loader is None else {"loader": loader}
        agent = Agent(ReplaySource(traffic_csv, rate=0), model_dir, tdev.DeviceTelemetry(DEVICE, texp.make_registry()),
                      **kwargs)
        assert agent.reload_if_changed()
        assert type(agent.detector) is (NumpyDetector if loader is None else Detector)
        assert agent.process(block) == 300
        assert agent.detector is not None
        scores[name] = agent.detector.decision_function(encode_block(block).features)
    np.testing.assert_allclose(scores["numpy"], scores["torch"], rtol=1e-5)


def test_replay_pacing_only_attacks_and_bursts(traffic_csv: Path) -> None:
    now = [0.0]
    src = ReplaySource(traffic_csv, rate=100, min_interval=0.25, clock=lambda: now[0])
    assert src.read(1000) is None  # nothing owed yet
    now[0] = 1.0
    block = src.read(1000)
    assert block is not None and block.data.count(b"\n") == 100
    assert src.read(1000) is None

    attacks = ReplaySource(traffic_csv, rate=0, only_attacks=True)
    enc = encode_block(attacks.read(200) or RawBlock(b"", []))
    assert enc.attack_types is not None and len(enc.attack_types) > 0
    assert set(enc.attack_types) and "Normal" not in set(enc.attack_types)

    normal = ReplaySource(traffic_csv, rate=0, only_normal=True, loop=False)
    seen: list[str] = []
    while (block := normal.read(200)) is not None:
        types = encode_block(block).attack_types
        assert types is not None
        seen += list(types)
    assert set(seen) == {"Normal"}
    assert len(seen) + len(attacks.attack_rows) == len(normal.lines)  # every other row, once
    with pytest.raises(ValueError, match="exclude"):
        ReplaySource(traffic_csv, only_attacks=True, only_normal=True)

    burst = ReplaySource(traffic_csv, rate=1, burst_rows=50, clock=lambda: now[0])
    burst.trigger_burst()
    got = [burst.read(20) for _ in range(3)]
    assert [b.data.count(b"\n") for b in got if b] == [20, 20, 10]
    for b in got:
        assert b is not None
        types = encode_block(b).attack_types
        assert types is not None and "Normal" not in set(types)


def test_replay_loops(tmp_path: Path, traffic_csv: Path) -> None:
    lines = traffic_csv.read_bytes().splitlines(keepends=True)
    small = tmp_path / "small.csv"
    small.write_bytes(b"".join(lines[:11]))  # header + 10 rows
    src = ReplaySource(small, rate=0)
    blocks = [src.read(7) or RawBlock(b"", []) for _ in range(5)]
    # Each pass is a stream of its own: a block ends at the wrap and the next one starts the new pass.
    assert [b.data.count(b"\n") for b in blocks] == [7, 3, 7, 3, 7]
    assert [b.new_stream for b in blocks] == [True, False, True, False, True]


def _rows(traffic_csv: Path, start: int, n: int) -> bytes:
    return b"".join(traffic_csv.read_bytes().splitlines(keepends=True)[1 + start : 1 + start + n])


def _drain(src: TailSource) -> int:
    n = 0
    while (block := src.read(100)) is not None:
        n += block.data.count(b"\n")
    return n


def test_tail_follows_appends_partial_lines_rotation_and_truncation(tmp_path: Path, traffic_csv: Path) -> None:
    header = traffic_csv.read_bytes().split(b"\n", 1)[0] + b"\n"
    live = tmp_path / "live.csv"
    src = TailSource(live)
    assert src.read(100) is None  # no file yet: wait
    live.write_bytes(header + _rows(traffic_csv, 0, 5))
    assert _drain(src) == 0  # started at the end: old rows are not replayed

    row = _rows(traffic_csv, 5, 1)
    with open(live, "ab") as f:
        f.write(_rows(traffic_csv, 6, 3) + row[:40])  # three rows and half of one
    assert _drain(src) == 3
    with open(live, "ab") as f:
        f.write(row[40:] + header)  # the rest of the row, then a repeated header (skipped)
    assert _drain(src) == 1

    # Rotation: the old file is renamed (and drained), a new file with its own header appears.
    with open(live, "ab") as f:
        f.write(_rows(traffic_csv, 10, 2))
    live.rename(tmp_path / "live.csv.1")
    assert _drain(src) == 2
    live.write_bytes(header + _rows(traffic_csv, 20, 4))
    assert _drain(src) == 4
    assert src.rotations == 1

    # Truncation (copytruncate): the file shrinks and starts over with a header.
    live.write_bytes(header + _rows(traffic_csv, 30, 2))
    assert _drain(src) == 2
    assert src.truncations == 1
    src.close()


def test_tail_waits_for_a_valid_header(tmp_path: Path, traffic_csv: Path) -> None:
    live = tmp_path / "live.csv"
    live.write_bytes(b"a,b,c\n1,2,3\n")
    src = TailSource(live, from_start=True)
    assert src.read(10) is None and src.bad_headers == 1
    assert src.read(10) is None and src.bad_headers == 1  # logged once per file version
    header = traffic_csv.read_bytes().split(b"\n", 1)[0] + b"\n"
    live.unlink()
    live.write_bytes(header + _rows(traffic_csv, 0, 3))
    assert _drain(src) == 3


def test_bad_rows_are_counted_by_reason_and_skipped(
    tmp_path: Path, traffic_csv: Path, scaler: Scaler, registry: CollectorRegistry
) -> None:
    good = _rows(traffic_csv, 0, 10).splitlines(keepends=True)
    n_fields = len(RAW_COLUMNS)
    garbage_numeric = good[1].split(b",")
    garbage_numeric[RAW_COLUMNS.index("tcp.len")] = b"abc"
    bad = [
        b"1,2,3\n",  # column_count
        b",".join(garbage_numeric),  # non_numeric
        b"\xff\xfe" + b"," * (n_fields - 1) + b"\n",  # garbage bytes, right width: non_numeric or bad_label
    ]
    model_dir = tmp_path / "model"
    save_bundle(model_dir, scaler, 1)
    header = traffic_csv.read_bytes().split(b"\n", 1)[0]
    csv_path = tmp_path / "mixed.csv"
    csv_path.write_bytes(header + b"\n" + b"".join([*good[:5], *bad, *good[5:]]))
    agent = Agent(ReplaySource(csv_path, rate=0, loop=False), model_dir, tdev.DeviceTelemetry(DEVICE, registry),
                  batch_size=8)
    agent.reload_if_changed()
    stats = agent.run(duration=10)
    assert stats.scored == 10
    assert stats.rows == 13
    assert value(registry, "iotad_edge_rejected_rows_total", reason="column_count") == 1
    assert value(registry, "iotad_edge_rejected_rows_total", reason="non_numeric") >= 1
    assert sum(stats.rejected.values()) == 3
    assert value(registry, "iotad_edge_scored_flows_total") == 10
    # Every reason is exported at 0 from the start (rates exist before the first bad row).
    assert registry.get_sample_value("iotad_edge_rejected_rows_total", {"device": DEVICE, "reason": "shifted"}) == 0


def test_agent_process_serves_union_metrics_and_stops_on_sigterm(
    tmp_path: Path, traffic_csv: Path, scaler: Scaler
) -> None:
    """`iotad agent` as a process: multiprocess dir, scrape of 127.0.0.1, clean SIGTERM."""
    from iotad.deploy.processes import free_port

    model_dir, mp = tmp_path / "model", tmp_path / "metrics"
    save_bundle(model_dir, scaler, 4, threshold=0.015)
    mp.mkdir()
    # A ClientApp that already exited left its train loss in the same directory.
    code = (
        "from iotad.telemetry.device import DeviceTelemetry; "
        "DeviceTelemetry('dev-test').trained(loss=0.25, samples=10, epochs=1, seconds=0.1)"
    )
    env = {**os.environ, texp.MULTIPROC_ENV: str(mp)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    port = free_port()
    argv = [sys.executable, "-m", "iotad.cli", "agent", "--device", DEVICE, "--model-dir", str(model_dir),
            "--metrics-dir", str(mp), "--metrics-port", str(port), "--replay", str(traffic_csv), "--rate", "500"]
    env.pop(texp.MULTIPROC_ENV)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        def scraped() -> bool:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return False
            samples.clear()
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            return samples.get(("iotad_edge_scored_flows_total", (("device", DEVICE),)), 0) > 0

        wait_until(scraped, timeout=60)
        d = (("device", DEVICE),)
        assert samples[("iotad_edge_model_round", d)] == 4
        assert samples[("iotad_edge_threshold_score", d)] == pytest.approx(0.015)
        assert samples[("iotad_edge_train_loss", d)] == pytest.approx(0.25)  # the dead ClientApp's value
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "stopped" in out, out[-2000:]


def test_encode_block_matches_loader(traffic_csv: Path) -> None:
    raw = traffic_csv.read_bytes()
    first, _, rest = raw.partition(b"\n")
    header = [c.strip() for c in first.decode().split(",")]
    enc = encode_block(RawBlock(rest, header))
    ref = load_traffic([traffic_csv], dedupe=False)
    assert np.array_equal(enc.features, ref.features)
    assert enc.attack_types is not None and list(enc.attack_types) == list(ref.attack_types)


def test_window_state_survives_a_model_reload(tmp_path: Path, traffic_csv: Path, registry: CollectorRegistry) -> None:
    """A bundle on window features makes the agent compute them; a new round's bundle keeps the stream's
    state (same features as the loader computes for the file in one pass), and the state is metered."""
    from iotad.features.sets import WINDOW, WindowStage, feature_names

    names = feature_names(WINDOW)
    tr = load_traffic([traffic_csv], extra=WindowStage())
    windowed = Scaler.from_stats(FeatureStats.of(tr.features[tr.labels == 0]))

    def save(rnd: int) -> None:
        weights = get_weights(Autoencoder(len(names), members=1))
        detector_from_weights(weights, windowed, 0.01, round=rnd, feature_names=names).save(tmp_path / "model")

    save(1)
    agent = Agent(ReplaySource(traffic_csv, rate=0, loop=False), tmp_path / "model",
                  tdev.DeviceTelemetry(DEVICE, registry), batch_size=97)
    assert agent.reload_if_changed() and agent.windows is not None
    stage = agent.windows
    seen = []
    for i in range(3):
        block = agent.source.read(97)
        assert block is not None and block.new_stream == (i == 0)
        seen.append(encode_block(block, agent.windows).features)
        if i == 1:
            save(2)
            assert agent.reload_if_changed()
    assert agent.windows is stage  # same features: the window state carries on
    one_pass = load_traffic([traffic_csv], dedupe=False, extra=WindowStage()).features
    got = np.concatenate(seen)
    np.testing.assert_array_equal(got, one_pass[: len(got)])
    agent.process(agent.source.read(97) or RawBlock(b"", []))
    assert value(registry, "iotad_edge_window_tracked_keys") > 0


def test_a_replay_that_falls_far_behind_sheds_the_backlog_and_counts_it(traffic_csv: Path) -> None:
    now = [0.0]
    src = ReplaySource(traffic_csv, rate=1000, clock=lambda: now[0])
    now[0] = 0.5
    block = src.read(64)
    assert block is not None and src.take_shed_rows() == 0  # 500 owed: within 20 blocks, served on
    now[0] = 10.0  # 9,500 rows owed: far behind, the pace restarts and the owed rows are counted as shed
    assert src.read(64) is None
    assert src.take_shed_rows() == 10_000 - 64
    assert src.take_shed_rows() == 0 and src.backlog_bytes() == 0


def test_a_tail_reports_what_waits_in_the_file(tmp_path: Path, traffic_csv: Path) -> None:
    header, *rows = traffic_csv.read_bytes().splitlines(keepends=True)
    live = tmp_path / "live.csv"
    live.write_bytes(header + b"".join(rows[:300]))
    src = TailSource(live, from_start=True)
    assert src.read(100) is not None
    left = src.backlog_bytes()
    assert left == len(b"".join(rows[100:300]))
    while src.read(100) is not None:
        pass
    assert src.backlog_bytes() == 0 and src.take_shed_rows() == 0
