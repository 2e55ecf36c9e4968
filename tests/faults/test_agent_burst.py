"""Fault matrix, load on a device: a live agent (``iotad agent --tail``, its own process) follows a capture file
that a writer fills at a steady rate, then at 10 times that rate, then as fast as it can write, then steadily
again. The capture file is the agent's queue: what it cannot score yet waits on disk, and memory stays
bounded (a block plus one read chunk).

What must hold: every row written is scored (the counts add up, nothing dropped); the agent's RSS stays
within a bound while it is behind; ``iotad_edge_backlog_bytes`` shows the backlog and returns to 0
afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from iotad.cli import main
from iotad.data.synthetic import write_synthetic
from iotad.deploy.processes import free_port
from tests.integration.test_local_federation import sample, scrape

pytestmark = [pytest.mark.faults, pytest.mark.integration]

DEVICE = "burst"
BASE_RATE = 1_000  # rows/s
PHASES = (("steady", BASE_RATE, 5.0), ("10x burst", 10 * BASE_RATE, 5.0), ("flood", None, 150_000),
          ("steady again", BASE_RATE, 5.0))
RSS_BOUND_MIB = 64  # above the steady RSS, at any moment


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_burst_waits_in_the_capture_file_and_every_row_is_scored(tmp_path: Path) -> None:
    csv_path = write_synthetic(tmp_path / "D", 1, 3000, seed=5)[0]
    assert main(["centralized", "--data", str(tmp_path / "D"), "--epochs", "1", "--members", "1",
                 "--out", str(tmp_path / "C")]) == 0
    header, *rows = csv_path.read_bytes().splitlines(keepends=True)
    live = tmp_path / "live.csv"
    live.write_bytes(header)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotad.cli", "agent", "--device", DEVICE, "--model-dir", str(tmp_path / "C" / "model"),
         "--tail", str(live), "--from-start", "--metrics-port", str(port), "--metrics-dir", str(tmp_path / "mp")],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"), env=env)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}/metrics"

    def metric(name: str) -> float:
        try:
            return sample(scrape(url), name, device=DEVICE) or 0.0
        except OSError:
            return 0.0

    written = 0
    peak = {"rss": 0, "backlog": 0.0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak["rss"] = max(peak["rss"], _rss_kib(proc.pid))
            peak["backlog"] = max(peak["backlog"], metric("iotad_edge_backlog_bytes"))

    def write(n: int) -> None:
        nonlocal written
        with open(live, "ab") as fh:
            fh.write(b"".join(rows[(written + i) % len(rows)] for i in range(n)))
        written += n

    try:
        deadline = time.monotonic() + 60
        while not metric("iotad_edge_threshold_score"):  # the model is loaded
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "agent.log").read_text()[-2000:]
            time.sleep(0.2)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        steady_rss = 0
        t0 = time.monotonic()
        for name, rate, amount in PHASES:
            start, before = time.monotonic(), written
            if rate is None:
                write(int(amount))  # as fast as the disk takes it
            else:
                while (elapsed := time.monotonic() - start) < amount:
                    write(int(rate * elapsed) - (written - before))
                    time.sleep(0.05)
                write(int(rate * amount) - (written - before))
            if name == "steady":
                steady_rss = _rss_kib(proc.pid)
        wrote_at = time.monotonic()
        deadline = wrote_at + 120
        while metric("iotad_edge_scored_flows_total") + sum(
                sample(scrape(url), "iotad_edge_rejected_rows_total", device=DEVICE, reason=r) or 0
                for r in ("column_count", "non_numeric", "non_finite", "shifted", "bad_label")) < written:
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"{metric('iotad_edge_scored_flows_total')} of {written} scored"
            time.sleep(0.2)
        caught_up = time.monotonic() - wrote_at
        time.sleep(1.0)
        stop.set()
        watcher.join(5)
        final = scrape(url)
        print(f"\n{written} rows in {wrote_at - t0:.0f} s; scored all {caught_up:.1f} s after the last write; "
              f"peak backlog {peak['backlog'] / 1e6:.1f} MB; RSS steady {steady_rss / 1024:.0f} MiB, "
              f"peak {peak['rss'] / 1024:.0f} MiB")
        assert sample(final, "iotad_edge_scored_flows_total", device=DEVICE) == written  # every row, once
        assert sample(final, "iotad_edge_shed_rows_total", device=DEVICE) == 0
        assert sample(final, "iotad_edge_backlog_bytes", device=DEVICE) == 0
        assert peak["backlog"] > 0  # the flood outran the agent: it was behind, and the rows waited on disk
        assert peak["rss"] <= steady_rss + RSS_BOUND_MIB * 1024, (steady_rss, peak["rss"])
        assert proc.poll() is None
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
