"""The SuperLink dies after round 1 of 3: the launcher restarts it, the devices rejoin by themselves and the
run resumes from round 1's checkpoint; every round runs exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.test_local_federation import device_ready, local_stack, sample, scrape

pytestmark = pytest.mark.integration


def _latest(workdir: Path) -> int:
    try:
        return int(json.loads((workdir / "checkpoints" / "latest.json").read_text())["round"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_superlink_killed_after_round_one_resumes_from_checkpoint(tmp_path: Path) -> None:
    workdir = tmp_path / "restart"
    with local_stack(workdir, "--devices", "2", "--rounds", "3", "--rows-per-device", "1200", "--local-epochs", "1",
                     "--rate", "50") as stack:
        stack.wait_for("round 1 checkpoint", lambda: _latest(workdir) >= 1, timeout=150, poll=0.2)
        assert _latest(workdir) == 1, "round 2 finished before the kill: the test lost its race"
        pid_file = workdir / "state" / "superlink.pid"
        old_pid = int(pid_file.read_text())
        os.kill(old_pid, signal.SIGKILL)  # a crash, not a clean stop
        killed_at = time.time()
        t0 = time.monotonic()

        status = stack.wait_trained(timeout=200)
        print(f"\nkill -> 3 rounds done in {time.monotonic() - t0:.0f}s; attempts: "
              + "; ".join(f"{a['status']} from round {a['resume_from_round']} ({a['reason']})"
                          for a in status["attempts"]))
        assert status["state"] == "completed", status
        assert int(pid_file.read_text()) != old_pid  # the launcher restarted it
        assert status["superlink_restarts"] == 1

        # Two submissions: the fresh run (lost with its SuperLink), then the resumed one.
        attempts = status["attempts"]
        assert [a["reason"] for a in attempts] == [None, "superlink_restart"], attempts
        assert attempts[0]["status"] == "lost"
        assert attempts[1]["resume_from_round"] == 1
        assert attempts[1]["status"] == "finished:completed"
        assert attempts[0]["run_id"] != attempts[1]["run_id"]

        # Rounds 1, 2, 3 exactly once; round 1 before the kill, 2 and 3 after (so 2 started from 1's bundle).
        history = json.loads((workdir / "checkpoints" / "history.json").read_text())
        assert [r["round"] for r in history] == [1, 2, 3]
        assert history[0]["finished_at"] < killed_at < history[1]["finished_at"]
        assert sorted(p.name for p in (workdir / "checkpoints").glob("round-*")) == [
            "round-0001", "round-0002", "round-0003"]

        agg = scrape(stack.endpoints()["aggregator"])
        assert sample(agg, "iotad_fl_completed_rounds_total") == 3  # 1 by the lost ServerApp + 2 by the resumed
        assert sample(agg, "iotad_fl_resumed_runs_total", reason="superlink_restart") == 1
        assert sample(agg, "iotad_fl_started_runs_total") == 1
        assert sample(agg, "iotad_fl_current_round") == 3

        # The devices rejoined without a restart of their own and got round 3's model.
        for name, url in stack.endpoints()["devices"].items():
            stack.wait_for(f"{name} on round 3", device_ready(url, name, 3), timeout=60)
            log = (workdir / "logs" / f"supernode-{name}.log").read_text()
            assert log.count("$ ") == 1  # started once
