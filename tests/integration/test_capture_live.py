"""Live capture with the real tshark on ``lo``: a small MQTT broker and client in this test exchange real
TCP packets on 127.0.0.1 (and a UDP sensor beside them); the rows must arrive, parse with zero
rejections, and be scored by an agent. Needs tshark and capture rights (scripts/setup.sh installs it; CI
runs as root)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from iotad.core.detector import detector_from_weights
from iotad.core.model import Autoencoder
from iotad.core.preprocessing import FeatureStats, Scaler
from iotad.core.train import get_weights
from iotad.data.loader import load_traffic
from iotad.edge.agent import Agent, encode_block
from iotad.edge.capture import CaptureSource
from iotad.edge.sources import RawBlock
from iotad.features.sets import feature_names, stage_for
from iotad.telemetry import device as tdev
from iotad.telemetry import exporter as texp

pytestmark = pytest.mark.integration
TOPIC = b"Temperature_and_Humidity"


def _packet(kind: int, body: bytes) -> bytes:
    assert len(body) < 128  # one-byte remaining length
    return bytes([kind, len(body)]) + body


def _connect(client_id: bytes) -> bytes:
    return _packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id)


def _publish(payload: bytes) -> bytes:
    return _packet(0x30, struct.pack("!H", len(TOPIC)) + TOPIC + payload)


class MqttLikeTraffic:
    """A one-thread broker that answers CONNECT with CONNACK, and a client publishing sensor readings
    over short sessions, plus UDP datagrams; until stopped or ``seconds``."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.broker = socket.create_server(("127.0.0.1", 0))
        self.port = self.broker.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.stop = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._serve, self._publish)]

    def _serve(self) -> None:
        self.broker.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn, _ = self.broker.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    if conn.recv(2)[:1] == b"\x10":
                        conn.sendall(b"\x20\x02\x00\x00")  # CONNACK
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

    def _publish(self) -> None:
        n = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as c:
                c.sendall(_connect(b"sensor-%d" % n))
                c.recv(4)
                for _ in range(5):
                    n += 1
                    c.sendall(_publish(b"%.1f" % (20 + n % 7)))
                    self.udp.sendto(b"reading %d" % n, ("127.0.0.1", self.udp_port))
                    time.sleep(0.01)
                c.sendall(b"\xe0\x00")  # DISCONNECT
            time.sleep(0.02)

    @property
    def filter(self) -> str:
        return f"port {self.port} or port {self.udp_port}"

    def __enter__(self) -> MqttLikeTraffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.broker.close()
        self.udp.close()


@pytest.fixture
def capture_traffic() -> Iterator[tuple[MqttLikeTraffic, CaptureSource]]:
    with MqttLikeTraffic() as traffic:
        source = CaptureSource("lo", capture_filter=traffic.filter, decode_as=[f"tcp.port=={traffic.port},mqtt"])
        try:
            yield traffic, source
        finally:
            source.close()


def _read_rows(source: CaptureSource, rows: int, timeout: float = 45.0) -> RawBlock:
    parts: list[bytes] = []
    deadline = time.monotonic() + timeout
    got = 0
    while got < rows:
        assert time.monotonic() < deadline, f"{got} rows in {timeout} s"
        block = source.read(rows - got)
        if block is None:
            time.sleep(0.05)
        else:
            parts.append(block.data)
            got += block.data.count(b"\n")
    return RawBlock(b"".join(parts), source.header, new_stream=True)


def test_packets_on_lo_arrive_parse_cleanly_and_are_scored(
    tmp_path: Path, capture_traffic: tuple[MqttLikeTraffic, CaptureSource],
) -> None:
    _, source = capture_traffic
    block = _read_rows(source, 300)
    text = block.data.decode()
    header = source.header
    rows = [line.split(",") for line in text.splitlines()]
    msgtype = [r[header.index("mqtt.msgtype")] for r in rows]
    assert {"1", "2", "3", "14"} <= set(msgtype), set(msgtype)  # CONNECT, CONNACK, PUBLISH, DISCONNECT
    assert any(r[header.index("mqtt.topic")] == TOPIC.decode() for r in rows)
    assert any(r[header.index("udp.port")] for r in rows)
    windows = stage_for("window")
    enc = encode_block(block, windows)
    assert enc.rows == len(rows) and len(enc.features) == len(rows)
    assert not any(enc.rejected.values()), enc.rejected
    assert windows is not None and windows.state.counters.bad_time == 0  # tshark's frame.time parses
    assert np.isfinite(enc.features).all()

    # An agent scores the live rows with a window-feature model (its scaler fitted on the first rows).
    names = feature_names("window")
    scaler = Scaler.from_stats(FeatureStats.of(enc.features))
    detector_from_weights(get_weights(Autoencoder(len(names))), scaler, 1.0, round=1,
                          feature_names=names).save(tmp_path / "model")
    registry: CollectorRegistry = texp.make_registry()
    agent = Agent(source, tmp_path / "model", tdev.DeviceTelemetry("lo-test", registry), batch_size=64,
                  poll_interval=0.1)
    runner = threading.Thread(target=agent.run, kwargs={"duration": 60.0}, daemon=True)
    runner.start()
    deadline = time.monotonic() + 45
    while agent.stats.scored < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    agent.stop_event.set()
    runner.join(10)
    assert agent.stats.scored >= 200, agent.stats
    assert agent.stats.rows == agent.stats.scored and not any(agent.stats.rejected.values()), agent.stats
    assert registry.get_sample_value("iotad_edge_scored_flows_total", {"device": "lo-test"}) == agent.stats.scored
    assert registry.get_sample_value("iotad_edge_shed_rows_total", {"device": "lo-test"}) == 0


def test_iotad_capture_writes_a_csv_the_loader_reads_without_rejections(tmp_path: Path) -> None:
    out = tmp_path / "lo.csv"
    with MqttLikeTraffic() as traffic:
        done = subprocess.run(
            [sys.executable, "-m", "iotad.cli", "capture", "--interface", "lo", "--count", "120", "--seconds", "45",
             "--out", str(out), "--capture-filter", traffic.filter, "--decode-as", f"tcp.port=={traffic.port},mqtt"],
            capture_output=True, text=True, timeout=90,
        )
    assert done.returncode == 0, done.stderr
    assert "120 rows from lo" in done.stderr
    tr = load_traffic([out], labelled=False, dedupe=False, extra=stage_for("window"))
    assert tr.rows_read == 120 and len(tr.features) == 120 and not any(tr.rejected.values()), tr.rejected
