"""Capture source against a stand-in tshark (a script): the row respelling, missing fields, the bounded
queue, restarts after a crash. The real tshark on ``lo`` is in tests/integration/test_capture_live.py."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from iotad.data.schema import LABEL_COLUMN, RAW_COLUMNS, TYPE_COLUMN
from iotad.edge.agent import encode_block
from iotad.edge.capture import CAPTURE_COLUMNS, CaptureError, CaptureSource, tshark_command
from iotad.edge.sources import RawBlock
from iotad.features.sets import stage_for

LACKING = "mqtt.msg_decoded_as"  # the stand-in does not know this field


def packet_line(i: int) -> str:
    """One tab-separated tshark line for the fields the stand-in knows, in the order it was asked for."""
    values = {"frame.time": f"Dec  7, 2026 19:13:{i % 60:02d}.425191345 UTC", "ip.src_host": "127.0.0.1",
              "ip.dst_host": "127.0.0.1", "tcp.srcport": "40000", "tcp.dstport": "1883", "tcp.flags": "0x0018",
              "tcp.len": "12", "tcp.payload": '10,0c"00', "mqtt.msgtype": "1", "mqtt.protoname": "MQTT"}
    return "\t".join(values.get(c, "") for c in CAPTURE_COLUMNS if c != LACKING)


def fake_tshark(tmp_path: Path, *, lines: int, exit_code: int) -> Path:
    """A tshark that knows every schema field but one, prints ``lines`` packets, and exits."""
    fields = "\n".join(f"F\tname\t{c}\tFT_STRING\tproto" for c in CAPTURE_COLUMNS if c != LACKING)
    (tmp_path / "fields.txt").write_text(fields + "\n")
    (tmp_path / "packets.txt").write_text("\n".join(packet_line(i) for i in range(lines)) + "\n")
    script = tmp_path / "tshark"
    script.write_text(f"""#!/bin/sh
if [ "$1" = "-G" ]; then cat {tmp_path}/fields.txt; exit 0; fi
echo "$@" > {tmp_path}/args.txt
echo 'Running as user "root" and group "root". This could be dangerous.' >&2
echo "starts" >> {tmp_path}/starts.txt
cat {tmp_path}/packets.txt
echo "tshark: the interface went away" >&2
exit {exit_code}
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def drain(source: CaptureSource, rows: int, timeout: float = 20.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while sum(b.count(b"\n") for b in out) < rows and time.monotonic() < deadline:
        block = source.read(1000)
        if block is None:
            time.sleep(0.02)
        else:
            out.append(block.data)
    return out


def test_rows_are_plain_csv_of_the_unlabelled_schema(tmp_path: Path) -> None:
    source = CaptureSource("eth9", tshark=str(fake_tshark(tmp_path, lines=50, exit_code=1)), backoff=(60, 60),
                           capture_filter="not port 9092", decode_as=["tcp.port==11883,mqtt"])
    try:
        data = b"".join(drain(source, 50))
        assert set(source.header) == set(RAW_COLUMNS) - {LABEL_COLUMN, TYPE_COLUMN}
        assert source.header[-1] == LACKING  # a field this tshark lacks is an empty last column
        args = (tmp_path / "args.txt").read_text().split()
        assert args[:2] == ["-i", "eth9"] and "not" in args and "tcp.port==11883,mqtt" in args
        assert LACKING not in args
        lines = data.splitlines()
        assert len(lines) == 50 and all(line.count(b",") == len(source.header) - 1 for line in lines)
        assert b'"' not in data  # the payload's quote and commas are respelled, not CSV-quoted
        windows = stage_for("window")
        enc = encode_block(RawBlock(data, source.header, new_stream=True), windows)
        assert enc.rows == 50 and not any(enc.rejected.values()), enc.rejected
        assert windows is not None and windows.state.counters.bad_time == 0  # tshark's clock parses
    finally:
        source.close()


def test_a_crashed_tshark_is_started_again_with_backoff(tmp_path: Path) -> None:
    source = CaptureSource("eth9", tshark=str(fake_tshark(tmp_path, lines=10, exit_code=2)), backoff=(0.1, 0.2))
    try:
        blocks = drain(source, 40)
        assert sum(b.count(b"\n") for b in blocks) >= 40  # rows keep coming over 4 tshark processes
        assert source.starts >= 4 and source.failures >= 3
        assert "the interface went away" in " ".join(source.stderr_tail)
        assert not any("dangerous" in line for line in source.stderr_tail)
    finally:
        source.close()
    starts = source.starts
    time.sleep(0.5)
    assert source.starts == starts  # closed: no new tshark


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    one_row = len(packet_line(0)) + 2
    source = CaptureSource("eth9", tshark=str(fake_tshark(tmp_path, lines=100, exit_code=1)), backoff=(60, 60),
                           max_backlog_bytes=10 * one_row)
    try:
        deadline = time.monotonic() + 20
        while source.rows < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.backlog_bytes() <= 10 * one_row
        kept = sum(b.count(b"\n") for b in drain(source, 100, timeout=0.5))
        shed = source.take_shed_rows()
        assert kept + shed == 100 and shed >= 90, (kept, shed)
        assert source.take_shed_rows() == 0 and source.backlog_bytes() == 0
    finally:
        source.close()


def test_missing_tshark_is_a_clear_error() -> None:
    with pytest.raises(CaptureError, match="apt-get install tshark"):
        CaptureSource("eth0", tshark="/nonexistent/tshark")


def test_rotation_and_options_reach_the_command() -> None:
    cmd = tshark_command("tshark", "wlan0", ["frame.time"], duration=3600, decode_as=["udp.port==5000,mqttsn"])
    assert cmd[:3] == ["tshark", "-i", "wlan0"] and "duration:3600" in cmd and cmd[-2:] == ["-e", "frame.time"]
