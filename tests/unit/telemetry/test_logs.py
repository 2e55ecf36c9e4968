"""Log lines: Flower's once, no spacer lines or colour codes, the device on every relayed line, JSON."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from iotad.telemetry.logs import Relay, clean, render

FLOWER_SCRIPT = """
import logging, sys
{before}
from iotad.telemetry.logs import configure
configure({args})
from flwr.common.logger import log
log(logging.INFO, "")
log(logging.DEBUG, "flower detail")
log(logging.INFO, "hello from flower")
logging.getLogger("iotad.x").info("iotad info")
logging.getLogger("iotad.x").warning("iotad warning")
"""


def run_script(before: str = "", args: str = "") -> list[str]:
    proc = subprocess.run([sys.executable, "-c", FLOWER_SCRIPT.format(before=before, args=args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return (proc.stdout + proc.stderr).splitlines()


@pytest.mark.parametrize("before", ["", "import flwr.common.logger"], ids=["flwr-after", "flwr-before"])
def test_flower_lines_once_without_spacers_or_colours(before: str) -> None:
    lines = run_script(before)
    assert sum("hello from flower" in line for line in lines) == 1, lines
    assert not any("flower detail" in line for line in lines), lines  # Flower's DEBUG needs -v
    assert not any("\x1b[" in line for line in lines), lines
    assert all(line.strip() and not line.rstrip().endswith(":") for line in lines), lines
    assert [line for line in lines if "iotad" in line] == [lines[-1]]  # a batch command: no INFO
    assert " WARNING " in lines[-1]


def test_service_logs_info_and_json_lines() -> None:
    lines = run_script(args="fmt='json', service=True, device='device-3'")
    objs = [json.loads(line) for line in lines]  # every line is one JSON object
    msgs = [o["msg"] for o in objs]
    assert msgs == ["hello from flower", "iotad info", "iotad warning"], msgs
    assert {o["device"] for o in objs} == {"device-3"}
    assert objs[0]["logger"] == "flwr" and objs[1]["level"] == "INFO"


def test_clean_strips_flower_formatting() -> None:
    assert clean("\x1b[92mINFO \x1b[0m:      ") is None
    assert clean("\x1b[92mINFO \x1b[0m:      Starting SuperNode") == ("INFO", "Starting SuperNode")
    assert clean("\x1b[93mWARNING \x1b[0m:   retry") == ("WARNING", "retry")
    assert clean("DEBUG 2026-12-08 00:41:07,123:      ping") == ("DEBUG", "ping")
    assert clean("Traceback (most recent call last):") == (None, "Traceback (most recent call last):")
    assert clean("INFO something: x") == (None, "INFO something: x")  # not Flower's shape: kept whole
    assert clean("   \n") is None


def test_relay_tags_every_line_and_drains_the_child() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfor i in range(3000):\n"
         "    print('\\x1b[92mINFO \\x1b[0m:      ' + ('' if i % 2 else 'line %d' % i))"],
        stdout=subprocess.PIPE)
    assert child.stdout is not None
    out = io.StringIO()
    relay = Relay(child.stdout, "supernode", device="device-1", fmt="text", out=out)
    relay.start()
    assert child.wait(timeout=60) == 0
    relay.join(timeout=30)
    lines = out.getvalue().splitlines()
    assert len(lines) == relay.lines == 1500
    assert all(" INFO device-1 supernode: line " in line for line in lines), lines[:3]
    assert lines[-1].endswith("line 2998")


def test_render_text_and_json() -> None:
    t = 1796688000.0  # 2026-12-08T00:00:00Z
    assert render("text", t, "ERROR", "boom", device="d", process="agent") == "2026-12-08T00:00:00Z ERROR d agent: boom"
    assert render("text", t, "INFO", "x") == "2026-12-08T00:00:00Z INFO x"
    assert json.loads(render("json", t, "INFO", 'a "q"', device="d")) == \
        {"ts": "2026-12-08T00:00:00Z", "level": "INFO", "device": "d", "msg": 'a "q"'}


def test_a_traceback_keeps_the_level_of_its_first_line() -> None:
    text = "ERROR: boom\nTraceback (most recent call last):\n  File \"x.py\", line 1\nINFO: fine again\n"
    r, w = os.pipe()
    with open(w, "wb") as f:
        f.write(text.encode())
    out = io.StringIO()
    source = open(r, "rb")  # noqa: SIM115 (the Relay closes it)
    relay = Relay(source, "agent", device="d", fmt="json", out=out)
    relay.start()
    relay.join(timeout=10)
    levels = [json.loads(line)["level"] for line in out.getvalue().splitlines()]
    assert levels == ["ERROR", "ERROR", "ERROR", "INFO"]
