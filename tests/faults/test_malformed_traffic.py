"""Fault matrix, malformed traffic: every kind of broken file through the loader, ``iotad score``,
``iotad centralized`` and the live agent (replay and tail). Each must count what it rejected, by reason,
score every valid row, stay alive, and exit non-zero only when nothing valid was read."""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from iotad.cli import main
from iotad.data.loader import load_traffic
from iotad.data.schema import SchemaError
from iotad.data.synthetic import write_synthetic
from iotad.edge.agent import Agent
from iotad.edge.sources import ReplaySource
from iotad.edge.tail import TailSource
from iotad.telemetry import device as tdev
from iotad.telemetry import exporter as texp
from tests.faults.malformed import KINDS, Malformed, malformed_kinds

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BASE_ROWS = 600
DEVICE = "faulty"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("malformed")
    csv_path = write_synthetic(root / "D", 1, 1500, seed=3)[0]
    assert main(["centralized", "--data", str(root / "D"), "--epochs", "1", "--members", "1",
                 "--out", str(root / "C")]) == 0
    lines = csv_path.read_bytes().splitlines(keepends=True)
    (root / "header").write_bytes(lines[0])
    (root / "rows").write_bytes(b"".join(lines[1 : 1 + BASE_ROWS]))
    return root


@pytest.fixture(scope="module")
def kinds(work: Path) -> dict[str, Malformed]:
    rows = (work / "rows").read_bytes().splitlines(keepends=True)
    types = [r.rstrip(b"\n").rsplit(b",", 1)[1].decode() for r in rows]
    attack = max((t for t in set(types) if t != "Normal"), key=types.count)
    return {k.name: k for k in malformed_kinds((work / "header").read_bytes().rstrip(b"\n"), rows,
                                               (attack, "Teleport_flood_capture"))}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _file(work: Path, kind: Malformed) -> Path:
    path = work / "files" / f"{_slug(kind.name)}.csv"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_bytes(kind.data)
    return path


def _check_counts(kind: Malformed, scored: int, read: int, rejected: dict[str, int]) -> None:
    assert scored == kind.valid, "a valid row was lost (or a broken one scored)"
    assert sum(rejected.values()) == kind.broken and read == kind.valid + kind.broken
    if kind.reason is not None:
        assert rejected.get(kind.reason) == kind.broken, rejected


def test_every_kind_is_built(kinds: dict[str, Malformed]) -> None:
    assert tuple(kinds) == KINDS and len(KINDS) >= 10
    assert all(k.notes.get(n, 1) > 0 for k in kinds.values() for n in k.notes)  # the fault really is in the file


@pytest.mark.parametrize("name", KINDS)
def test_loader_counts_every_row(work: Path, kinds: dict[str, Malformed], name: str) -> None:
    kind = kinds[name]
    path = _file(work, kind)
    if kind.schema_error:
        with pytest.raises(SchemaError):
            load_traffic([path], dedupe=False)
        return
    traffic = load_traffic([path], dedupe=False)
    _check_counts(kind, len(traffic), traffic.rows_read, traffic.rejected)
    assert {k: v for k, v in traffic.label_notes.items() if v} == kind.notes


@pytest.mark.parametrize("name", KINDS)
def test_score_reports_what_it_rejected(work: Path, kinds: dict[str, Malformed], name: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    kind = kinds[name]
    out = work / "scored" / f"{_slug(name)}.csv"
    code = main(["score", "--model", str(work / "C"), "--csv", str(_file(work, kind)), "--out", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    if kind.valid == 0:
        assert code == 2 and "error" in err  # nothing valid read: a non-zero exit that says why
        return
    assert code == 0
    with open(out, newline="") as f:
        scored = list(csv.DictReader(f))
    assert len(scored) == kind.valid and len({r["row"] for r in scored}) == kind.valid
    assert f"scored {kind.valid} of {kind.valid + kind.broken} rows" in err
    assert f"rejected {kind.broken}" in err
    if kind.reason is not None:
        assert f"{kind.reason} {kind.broken}" in err
    for note, n in kind.notes.items():
        assert f"{note} {n}" in err


@pytest.mark.parametrize("name", KINDS)
def test_centralized_counts_what_it_rejected(work: Path, kinds: dict[str, Malformed], name: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    kind = kinds[name]
    data = work / "runs" / _slug(name) / "D"
    (data / "device-0").mkdir(parents=True)
    (data / "device-0" / "traffic.csv").write_bytes(kind.data)
    run = data.parent / "R"
    code = main(["centralized", "--data", str(data), "--epochs", "1", "--members", "1", "--out", str(run)])
    assert "Traceback" not in capsys.readouterr().err
    if kind.valid == 0:
        assert code == 2
        return
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert sum(info["rows"].values()) == kind.valid  # every valid row is in one split (none duplicates)
    assert sum(info["rejected"].values()) == kind.broken
    if kind.reason is not None:
        assert info["rejected"] == {kind.reason: kind.broken}
    assert info["label_notes"] == kind.notes


def _agent(source: ReplaySource | TailSource, work: Path, registry: CollectorRegistry) -> Agent:
    agent = Agent(source, work / "C" / "model", tdev.DeviceTelemetry(DEVICE, registry), batch_size=64,
                  idle_sleep=0.01)
    assert agent.reload_if_changed()
    return agent


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"device": DEVICE, **labels}) or 0.0


def _check_metrics(kind: Malformed, registry: CollectorRegistry, extra_scored: int = 0) -> None:
    assert _metric(registry, "iotad_edge_scored_flows_total") == kind.valid + extra_scored
    rejected = {r: _metric(registry, "iotad_edge_rejected_rows_total", reason=r)
                for r in ("column_count", "non_numeric", "non_finite", "shifted", "bad_label")}
    assert sum(rejected.values()) == kind.broken
    if kind.reason is not None:
        assert rejected[kind.reason] == kind.broken


@pytest.mark.parametrize("name", KINDS)
def test_agent_replay_scores_every_valid_row(work: Path, kinds: dict[str, Malformed], name: str) -> None:
    kind = kinds[name]
    registry = texp.make_registry()
    if kind.schema_error:
        with pytest.raises(SchemaError):
            ReplaySource(_file(work, kind), rate=0, loop=False)
        return
    agent = _agent(ReplaySource(_file(work, kind), rate=0, loop=False), work, registry)
    stats = agent.run(duration=30)
    agent.stop()
    _check_counts(kind, stats.scored, stats.rows, stats.rejected)
    _check_metrics(kind, registry)


@pytest.mark.parametrize("name", KINDS)
def test_agent_tail_scores_every_valid_row(work: Path, kinds: dict[str, Malformed], name: str,
                                           tmp_path: Path) -> None:
    """A file another process writes: the broken file first, then a valid header and rows replace it, and
    the agent (alive throughout) scores those too."""
    kind = kinds[name]
    registry = texp.make_registry()
    live = tmp_path / "live.csv"
    live.write_bytes(kind.data)
    source = TailSource(live, from_start=True)
    agent = _agent(source, work, registry)
    thread = threading.Thread(target=agent.run, kwargs={"duration": 60}, daemon=True)
    thread.start()
    # A tail cannot tell an unterminated last line from one being written: it waits for the file to move on.
    pending = int(kind.valid > 0 and not kind.data.endswith(b"\n"))
    try:
        _wait(lambda: agent.stats.rows >= kind.valid + kind.broken - pending, 30)
        time.sleep(0.3)  # the agent polls on: the counts stay put
        assert agent.stats.rows == kind.valid + kind.broken - pending
        if kind.schema_error:
            assert source.header == [] and source.bad_headers == int(kind.data != b"")

        # Then a good capture replaces the file: the agent is alive, finishes the old file and scores the new.
        good = (work / "header").read_bytes() + b"".join((work / "rows").read_bytes().splitlines(keepends=True)[:50])
        tmp = tmp_path / "next.csv"
        tmp.write_bytes(good)
        tmp.replace(live)
        _wait(lambda: agent.stats.scored >= kind.valid + 50, 30)
        time.sleep(0.3)
        assert thread.is_alive()
        _check_counts(kind, agent.stats.scored - 50, agent.stats.rows - 50, agent.stats.rejected)
        _check_metrics(kind, registry, extra_scored=50)
    finally:
        agent.stop()
        thread.join(10)


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_line_that_never_ends_keeps_the_tail_bounded(tmp_path: Path, work: Path) -> None:
    live = tmp_path / "live.csv"
    rows = (work / "rows").read_bytes().splitlines(keepends=True)
    with open(live, "wb") as f:
        f.write((work / "header").read_bytes() + b"".join(rows[:10]))
        for _ in range(8 * TailSource.MAX_LINE // (1 << 16)):  # 8 MAX_LINEs and no newline
            f.write(b"9" * (1 << 16))
    source = TailSource(live, from_start=True)
    block = source.read(100)
    assert block is not None and block.data.count(b"\n") == 10
    assert source.read(100) is None and len(source._buf) <= TailSource.MAX_LINE + TailSource.CHUNK
    with open(live, "ab") as f:
        f.write(b"\n" + b"".join(rows[10:15]))
    block = source.read(100)
    assert block is not None and block.data.count(b"\n") == 6  # the overlong line as one (bad) row, 5 good
    traffic = load_traffic([live], dedupe=False)  # the loader counts it the same way
    assert traffic.rejected["column_count"] == 1 and len(traffic) == 15
