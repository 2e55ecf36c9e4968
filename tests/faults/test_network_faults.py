"""Fault matrix, the network: the link between one device and the aggregator stalls for 30 s in the middle
of a round, then every connection on it is cut (a TCP relay on 127.0.0.1 in front of the Fleet API, for
device-1 only). The device must reconnect by itself, without a restart; the run completes; nothing crashes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.tcp_proxy import TcpProxy
from tests.faults.test_device_faults import _group_running_a_clientapp, _latest
from tests.integration.test_local_federation import MARK_ENV, Stack, marked_pids

pytestmark = [pytest.mark.faults, pytest.mark.integration]

CUT_SECONDS = 30.0

_LAUNCH = textwrap.dedent("""
    import sys
    from iotad.deploy.local_stack import run_local_stack
    workdir, proxy = sys.argv[1], sys.argv[2]
    run_local_stack(workdir, 3, rounds=3, rows_per_device=1200, local_epochs=1, rate=50, keep_running=True,
                    device_superlink={"device-1": proxy})
""")


def _fleet(workdir: Path) -> tuple[str, int] | None:
    try:
        host, port = json.loads((workdir / "endpoints.json").read_text())["fleet"].rsplit(":", 1)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    return host, int(port)


@pytest.fixture
def stack_behind_proxy(tmp_path: Path) -> Iterator[tuple[Stack, TcpProxy]]:
    workdir = tmp_path / "cut"
    workdir.mkdir()
    proxy = TcpProxy(lambda: _fleet(workdir)).start()
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK_ENV: mark, "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(workdir / "launcher.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(workdir), f"127.0.0.1:{proxy.port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    stack = Stack(workdir, proc, mark)
    try:
        yield stack, proxy
    finally:
        stack.stop()
        proxy.close()
        for pid in marked_pids(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_a_30_s_network_cut_mid_round_heals_by_itself(stack_behind_proxy: tuple[Stack, TcpProxy]) -> None:
    stack, proxy = stack_behind_proxy
    workdir = stack.workdir
    stack.wait_for("round 1 checkpoint", lambda: _latest(workdir) >= 1, timeout=180, poll=0.2)
    stack.wait_for("device-1 running a ClientApp of round 2",
                   lambda: _group_running_a_clientapp(stack.mark, 1) is not None, timeout=60, poll=0.05)
    proxy.pause()
    cut_at = time.time()
    time.sleep(CUT_SECONDS)
    cut = proxy.cut()
    proxy.resume()
    connections_before = proxy.connections
    healed_at = time.time()

    status = stack.wait_trained(timeout=420)
    assert status["state"] == "completed", status
    history = json.loads((workdir / "checkpoints" / "history.json").read_text())
    print(f"\ncut {cut} connection(s) after {CUT_SECONDS:.0f} s; {proxy.connections - connections_before} new since")
    print("\n".join(f"round {r['round']}: {r['devices_participating']} devices, rejected {r['rejected_updates']}, "
                    f"{r['duration_seconds']:.0f} s, finished {r['finished_at'] - cut_at:+.0f} s from the cut"
                    for r in history))
    assert [r["round"] for r in history] == [1, 2, 3]
    assert history[1]["finished_at"] > cut_at  # round 2 was in flight when the link went down
    assert proxy.connections > connections_before  # the device reconnected by itself ...
    assert history[2]["devices_participating"] == 3 and history[2]["finished_at"] > healed_at  # ... and trained
    assert (workdir / "logs" / "supernode-device-1.log").read_text().count("$ ") == 1  # without a restart
    assert "SuperNode died" not in stack.output()
