"""The aggregator logs one line per completed round, from the history the ServerApp checkpoints."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest

from iotad.deploy.aggregator import RoundLog
from iotad.fl.checkpoint import RoundRecord


def write_history(root: Path, n: int) -> None:
    rows = [asdict(RoundRecord(round=r, train_loss=0.5 / r, devices_participating=3 - (r == 2),
                               devices_failed=int(r == 2), rejected_updates={"error": 0},
                               threshold=0.25, metrics={"f1": 0.9}, duration_seconds=12.5 * r,
                               model_bytes=1000)) for r in range(1, n + 1)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "history.json").write_text(json.dumps(rows))


def test_one_line_per_round_and_none_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_history(tmp_path, 1)  # an earlier attempt's round: not logged again
    caplog.set_level(logging.INFO, logger="iotad.deploy.aggregator")
    with RoundLog(tmp_path, rounds=3, every=0.05) as rl:
        write_history(tmp_path, 2)
        rl.poll()
        (tmp_path / "history.json").write_text("[{")  # mid-write: ignored, retried
        rl.poll()
        write_history(tmp_path, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "iotad.deploy.aggregator"]
    assert lines == [
        "round 2/3 done in 25.0 s: 2 devices (lost: 1 missing), train loss 0.25, threshold 0.25, eval f1 0.900",
        "round 3/3 done in 37.5 s: 3 devices, train loss 0.1667, threshold 0.25, eval f1 0.900",
    ]


def test_no_history_no_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with RoundLog(tmp_path / "none", rounds=2, every=0.05):
        pass
    assert not [r for r in caplog.records if r.name == "iotad.deploy.aggregator"]
