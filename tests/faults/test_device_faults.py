"""Fault matrix, a device dies: SIGKILL of one device's SuperNode and of the ClientApp it is running, in the
middle of a round, in a real local federation (``iotad local-federation``, TLS, 127.0.0.1).

What must hold: the round completes with the other devices and counts the lost one; the device is
restarted (the launcher does what a container's restart policy does), rejoins and trains in the next round;
its agent, a separate process, keeps scoring with the last good model the whole time."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.test_local_federation import device_ready, local_stack, marked_pids, sample, scrape
from tests.integration.test_restart import _latest

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _supernode_group(mark: str, partition: int) -> int | None:
    supernode = [p for p in marked_pids(mark) if b"flower-supernode" in _cmdline(p)
                 and f"partition-id={partition}".encode() in _cmdline(p)]
    return os.getpgid(supernode[0]) if len(supernode) == 1 else None


def _group_running_a_clientapp(mark: str, partition: int) -> int | None:
    """The process group of device ``partition``'s SuperNode, once a ClientApp of it is running."""
    pids = marked_pids(mark)
    supernode = [p for p in pids if b"flower-supernode" in _cmdline(p) and f"partition-id={partition}".encode()
                 in _cmdline(p)]
    if len(supernode) != 1:
        return None
    group = os.getpgid(supernode[0])
    busy = any(b"flwr-clientapp" in _cmdline(p) and os.getpgid(p) == group for p in pids if _cmdline(p))
    return group if busy else None


def test_a_device_killed_mid_round_is_counted_restarted_and_trains_again(tmp_path: Path) -> None:
    workdir = tmp_path / "kill-device"
    with local_stack(workdir, "--devices", "3", "--rounds", "3", "--rows-per-device", "1200", "--local-epochs", "1",
                     "--rate", "50") as stack:
        stack.wait_for("round 1 checkpoint", lambda: _latest(workdir) >= 1, timeout=150, poll=0.2)
        agent = stack.endpoints()["devices"]["device-1"]
        stack.wait_for("device-1's agent scoring with round 1", device_ready(agent, "device-1", 1), timeout=60)
        group: int | None = None

        def clientapp_running() -> bool:
            nonlocal group
            group = _group_running_a_clientapp(stack.mark, 1)
            return group is not None

        stack.wait_for("device-1 running a ClientApp of round 2", clientapp_running, timeout=60, poll=0.05)
        assert group is not None and _latest(workdir) == 1
        scored_at_kill = sample(scrape(agent), "iotad_edge_scored_flows_total", device="device-1") or 0
        os.killpg(group, signal.SIGKILL)  # the SuperNode, its SuperExec and the running ClientApp
        killed_at = time.time()

        # The device is down: its agent goes on with round 1's model.
        stack.wait_for("device-1's agent scoring on", lambda: (sample(
            scrape(agent), "iotad_edge_scored_flows_total", device="device-1") or 0) > scored_at_kill, timeout=30)
        assert sample(scrape(agent), "iotad_edge_model_round", device="device-1") == 1
        assert _latest(workdir) == 1  # still in round 2

        status = stack.wait_trained(timeout=420)
        assert status["state"] == "completed", status
        history = json.loads((workdir / "checkpoints" / "history.json").read_text())
        print("\n" + "\n".join(f"round {r['round']}: {r['devices_participating']} devices, rejected "
                               f"{r['rejected_updates']}, {r['duration_seconds']:.0f} s" for r in history))
        assert [r["round"] for r in history] == [1, 2, 3]  # no round lost or repeated
        assert history[0]["devices_participating"] == 3
        assert (history[1]["devices_participating"], history[1]["rejected_updates"]) == (2, {"error": 1})
        assert history[1]["finished_at"] > killed_at
        assert history[2]["devices_participating"] == 3  # back, and trained

        agg = scrape(stack.endpoints()["aggregator"])
        assert sample(agg, "iotad_fl_failed_devices_total", reason="error") == 1
        restarts = stack.output().count("device-1: SuperNode died; restarted")
        print(f"device-1 restarts: {restarts}")
        # Refused while its old session is still online (up to 2 x 30 s heartbeats), with backoff.
        assert 1 <= restarts <= 7 and "SuperNode died" not in stack.output().replace("device-1: SuperNode died", "")
        assert (workdir / "logs" / "supernode-device-1.log").read_text().count("$ ") == 1 + restarts
        for name in ("device-0", "device-2"):
            assert (workdir / "logs" / f"supernode-{name}.log").read_text().count("$ ") == 1
        end = scrape(agent)
        assert sample(end, "iotad_edge_model_round", device="device-1") == 3  # the agent took the new models


def test_a_device_whose_superexec_died_is_restarted_and_trains_again(tmp_path: Path) -> None:
    """Flower 1.39's SuperExec exits on any unexpected SuperLink error (seen: sqlite "database is locked" under
    heavy load) and its SuperNode lives on without it, running no ClientApp ever again. The launcher sees the
    SuperExec gone and restarts the device."""
    workdir = tmp_path / "kill-superexec"
    with local_stack(workdir, "--devices", "2", "--rounds", "3", "--rows-per-device", "900", "--local-epochs", "1",
                     "--rate", "50") as stack:
        stack.wait_for("round 1 checkpoint", lambda: _latest(workdir) >= 1, timeout=150, poll=0.2)
        superexecs = [p for p in marked_pids(stack.mark) if b"flower-superexec" in _cmdline(p)
                      and os.getpgid(p) == _supernode_group(stack.mark, 1)]
        assert len(superexecs) == 1
        os.kill(superexecs[0], signal.SIGKILL)  # the SuperNode itself lives on

        status = stack.wait_trained(timeout=420)
        assert status["state"] == "completed", status
        history = json.loads((workdir / "checkpoints" / "history.json").read_text())
        print("\n" + "\n".join(f"round {r['round']}: {r['devices_participating']} devices, rejected "
                               f"{r['rejected_updates']}, {r['duration_seconds']:.0f} s" for r in history))
        assert [r["round"] for r in history] == [1, 2, 3]
        assert history[2]["devices_participating"] == 2  # device-1 is back and trains
        assert "device device-1: its SuperExec died" in stack.output()
        assert (workdir / "logs" / "supernode-device-1.log").read_text().count("$ ") >= 2
        assert (workdir / "logs" / "supernode-device-0.log").read_text().count("$ ") == 1
