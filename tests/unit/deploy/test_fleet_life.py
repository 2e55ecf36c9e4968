"""Fleet life after training: devices that join later get the model, `iotad retrain` trains again."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from iotad import cli
from iotad.deploy.aggregator import Aggregator
from iotad.deploy.runs import RunResult
from iotad.deploy.status import RETRAIN_REQUEST


class FakeFederation:
    """The parts of LocalFederation the aggregator's after-training loop uses."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.registry = SimpleNamespace(env={})
        self.timings = SimpleNamespace(superlink_restart=[])
        self.keys_dir = workdir / "keys"
        self.devices: dict[str, Any] = {}
        self.online: list[str] = []
        self.submitted: list[dict[str, Any]] = []
        self.outcome = "finished:completed"
        self.min_online = 0

    def nodes(self) -> list[dict[str, Any]]:
        return [{"node-id": n, "status": "online"} for n in self.online] + [{"node-id": "9", "status": "offline"}]

    def submit(self, run_config: dict[str, Any]) -> Any:
        self.submitted.append(dict(run_config))
        result = RunResult(len(self.submitted), self.outcome, "", 1.0, self.workdir / "run.log", 0)
        return SimpleNamespace(wait=lambda timeout=None: result)

    def register_devices(self, names: list[str]) -> None:
        for n in names:
            self.devices[n].node_id = 1

    def add_device(self, name: str) -> None:
        self.devices[name] = SimpleNamespace(node_id=None)


def make_aggregator(tmp_path: Path, completed: bool = True) -> tuple[Aggregator, FakeFederation]:
    fed = FakeFederation(tmp_path)
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    if completed:
        (ckpt / "latest.json").write_text(json.dumps({"round": 2}))
    agg = Aggregator(fed, rounds=2, checkpoint_dir=ckpt, multiproc_dir=tmp_path / "metrics")  # type: ignore[arg-type]
    agg.status.state = "completed" if completed else "training"
    return agg, fed


def test_late_joiners_get_the_model_once(tmp_path: Path) -> None:
    agg, fed = make_aggregator(tmp_path)
    agg.holders = {"1", "2", "3"}  # trained together
    fed.online = ["1", "2", "3"]
    assert not agg.deliver() and fed.submitted == []  # nobody new: no run
    fed.online = ["1", "2", "3", "4", "5"]  # scaled up
    assert agg.deliver()
    assert len(fed.submitted) == 1
    cfg = fed.submitted[0]
    assert cfg["distribute"] is True and cfg["min-nodes"] == 5 and cfg["checkpoint-dir"] == str(agg.checkpoint_dir)
    assert agg.holders == {"1", "2", "3", "4", "5"} and agg.status.model_holders == 5
    assert not agg.deliver() and len(fed.submitted) == 1  # delivered: not again


def test_a_restarted_aggregator_delivers_to_everyone_and_retries_with_backoff(tmp_path: Path) -> None:
    agg, fed = make_aggregator(tmp_path)  # holders unknown after a restart
    fed.online = ["1", "2"]
    fed.outcome = "finished:failed"
    period = agg.deliver_every
    assert agg.deliver() and agg.holders == set()
    assert agg.delivery_backoff() == 2 * period
    assert agg.deliver() and agg.delivery_backoff() == 4 * period
    fed.outcome = "finished:completed"
    assert agg.deliver() and agg.holders == {"1", "2"} and agg.delivery_backoff() == period


def test_no_delivery_before_training_completed(tmp_path: Path) -> None:
    agg, fed = make_aggregator(tmp_path, completed=False)
    fed.online = ["1"]
    assert not agg.deliver() and fed.submitted == []


def test_retrain_request_archives_the_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agg, _ = make_aggregator(tmp_path)
    agg.holders = {"1"}
    assert cli.main(["retrain", "--state-dir", str(tmp_path)]) == 2  # not an aggregator's state dir yet
    agg._write_status()
    assert cli.main(["retrain", "--state-dir", str(tmp_path)]) == 0
    assert "retrain requested" in capsys.readouterr().err
    assert (tmp_path / RETRAIN_REQUEST).exists()
    assert agg.take_retrain_request()
    assert not (tmp_path / RETRAIN_REQUEST).exists()
    assert not (tmp_path / "checkpoints").exists()
    assert json.loads((tmp_path / "checkpoints.previous" / "latest.json").read_text()) == {"round": 2}
    assert agg.holders == set()
    assert not agg.take_retrain_request()  # once
