"""Server-side federation helpers: run config, strategy choice, update screening, reply order."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum
from flwr.supercore.task_identity import TaskIdentity

from iotad.cli import build_parser
from iotad.core.model import DEFAULT_MEMBERS
from iotad.fl.client_app import training_seed
from iotad.fl.records import config_int
from iotad.fl.screening import in_content_order, screen_updates
from iotad.fl.strategy import FederationConfig, make_strategy


@pytest.fixture(autouse=True)
def _run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """New Messages take their ids from the process's task identity, which Flower sets in an app process."""
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


REFERENCE = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def _reply(arrays: list[np.ndarray], examples: int = 10) -> Message:
    content = RecordDict({"arrays": ArrayRecord.from_numpy_ndarrays(arrays),
                          "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, dst_node_id=1, message_type="train")


def test_run_config_keys_and_strategies() -> None:
    cfg = FederationConfig.from_run_config({"num-server-rounds": 7, "strategy": "krum", "local-epochs": 3,
                                            "unrelated-key": 1})
    assert (cfg.num_rounds, cfg.strategy, cfg.local_epochs) == (7, "krum", 3)
    assert FederationConfig().members == DEFAULT_MEMBERS
    expected = {"fedavg": FedAvg, "fedprox": FedProx, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg,
                "krum": Krum}
    for name, cls in expected.items():
        assert type(make_strategy(FederationConfig(strategy=name))) is cls
    with pytest.raises(ValueError, match="unknown strategy"):
        FederationConfig.from_run_config({"strategy": "fedsgd"})


def test_defaults_agree_across_pyproject_config_and_clis() -> None:
    """The app's run config, FederationConfig and the CLIs state some defaults separately (the ServerApp
    and the launchers stay torch-free); they must not drift apart."""
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    run_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert FederationConfig.from_run_config(run_config) == FederationConfig()
    parser = build_parser()
    centralized = parser.parse_args(["centralized", "--data", "D", "--out", "R"])
    simulate = parser.parse_args(["simulate", "--data", "D", "--rounds", "5", "--out", "F"])
    assert centralized.members == simulate.members == run_config["members"] == DEFAULT_MEMBERS
    assert simulate.local_epochs == run_config["local-epochs"]


def test_poisoned_updates_are_rejected_and_counted() -> None:
    good = _reply([np.ones((3, 2), np.float32), np.ones(2, np.float32)])
    nan = _reply([np.full((3, 2), np.nan, np.float32), np.ones(2, np.float32)])
    inf = _reply([np.ones((3, 2), np.float32), np.array([np.inf, 0], np.float32)])
    shape = _reply([np.ones((2, 3), np.float32), np.ones(2, np.float32)])
    missing = _reply(REFERENCE[:1])
    no_count = Message(content=RecordDict({"arrays": ArrayRecord.from_numpy_ndarrays(REFERENCE)}),
                       dst_node_id=1, message_type="train")
    valid, rejected = screen_updates([good, nan, inf, shape, missing, no_count], REFERENCE)
    assert valid == [good]
    assert rejected == {"non_finite": 2, "shape": 2, "malformed": 1}


def test_replies_are_aggregated_in_an_order_fixed_by_their_content() -> None:
    rng = np.random.default_rng(0)
    replies = [_reply([rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)], n)
               for n in (5, 7, 11)]
    orders = {tuple(id(r) for r in in_content_order(p)) for p in itertools.permutations(replies)}
    assert len(orders) == 1
    # ... so a weighted average comes out bit-identical whatever order the devices answered in.
    averages = {
        FedAvg().aggregate_train(1, in_content_order(p))[0].to_numpy_ndarrays()[0].tobytes()  # type: ignore[union-attr]
        for p in itertools.permutations(replies)
    }
    assert len(averages) == 1


def _context(node_id: int, name: str) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={"device-name": name}, state=RecordDict(),
                   run_config={})


def test_training_seed_depends_on_device_round_and_model_seed_not_node_id() -> None:
    config = {"server-round": 2, "model-seed": 0}
    a = training_seed(config, _context(123456789, "plant-a"))  # type: ignore[arg-type]
    assert a == training_seed(config, _context(987654321, "plant-a"))  # type: ignore[arg-type]
    assert a != training_seed(config, _context(123456789, "plant-b"))  # type: ignore[arg-type]
    assert a != training_seed({**config, "server-round": 3}, _context(1, "plant-a"))  # type: ignore[arg-type]
    assert a != training_seed({**config, "model-seed": 1}, _context(1, "plant-a"))  # type: ignore[arg-type]
    assert config_int(config, "server-round") == 2


@pytest.mark.parametrize(("split_seed", "expected"), [(None, 3), (0, 0)])
def test_simulate_passes_its_split_seed_to_the_run_config(
    split_seed: int | None, expected: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``iotad simulate --split-seed`` reaches the devices (run config ``split-seed``); the model seed stays."""
    import iotad.fl.server_app
    from iotad.fl.simulation import simulate

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def capture(overrides: dict[str, object]) -> None:
        seen.update(overrides)
        raise Stop

    monkeypatch.setattr(iotad.fl.server_app, "make_server_app", capture)
    for var in ("IOTAD_CACHE_DIR", "RAY_DEDUP_LOGS"):  # simulate sets them for its run: restore them after
        monkeypatch.setenv(var, "")
    (tmp_path / "device-0").mkdir()
    with pytest.raises(Stop):
        simulate(tmp_path, rounds=1, out=tmp_path / "F", seed=3, split_seed=split_seed)
    assert (seen["split-seed"], seen["model-seed"]) == (expected, 3)


class _Grid:
    """Three connected devices; every train message is answered by ``answer(message, index)``."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]

    def send_and_receive(self, messages: object, timeout: float | None = None) -> list[Message]:
        assert callable(self.answer)
        return [self.answer(m, i) for i, m in enumerate(list(messages))]  # type: ignore[call-overload]


def test_a_round_needs_min_replies_usable_updates(tmp_path: Path) -> None:
    from flwr.app import Error

    from iotad.fl.checkpoint import CheckpointStore
    from iotad.fl.strategy import FederatedTraining

    def answer(msg: Message, i: int) -> Message:
        if i == 0:
            return _reply([np.full((3, 2), np.nan, np.float32), np.ones(2, np.float32)])  # screened
        return Message(Error(code=5, reason="node offline"), reply_to=msg)  # a device gone

    cfg = FederationConfig(num_rounds=1, min_nodes=3, min_replies=1, checkpoint_dir=str(tmp_path))
    training = FederatedTraining(_Grid(answer), cfg, CheckpointStore(tmp_path), initial_weights=lambda: REFERENCE)
    with pytest.raises(RuntimeError, match=r"round 1: 0 usable updates of 3, min-replies is 1 \(rejected: "
                                           r"\{'non_finite': 1, 'error': 2\}\)"):
        training.run()


def test_round_failures_are_counted_by_reason() -> None:
    from iotad.fl.checkpoint import RoundRecord

    record = RoundRecord(2, 0.1, 2, 3, {"error": 1, "non_finite": 1, "shape": 0}, 0.5, {}, 1.0, 10)
    assert record.failures() == {"error": 1, "non_finite": 1, "missing": 1}
    assert RoundRecord(1, 0.1, 3, 0, {}, 0.5, {}, 1.0, 10).failures() == {}


def test_distribute_sends_the_latest_checkpoint_to_every_device_and_trains_nothing(tmp_path: Path) -> None:
    """A device that joins after training gets the final round's model: one evaluate message each,
    with the checkpoint's weights, threshold and round; no train message, no new checkpoint."""
    import torch

    from iotad.core import model
    from iotad.core.evaluation import ClassHistograms, Confusion
    from iotad.core.train import get_weights
    from iotad.fl.checkpoint import Checkpoint, CheckpointStore
    from iotad.fl.records import confusion_to_metrics
    from iotad.fl.strategy import FederatedTraining

    cfg = FederationConfig(num_rounds=2, min_nodes=3, checkpoint_dir=str(tmp_path), feature_set="packet")
    training = FederatedTraining(_Grid(lambda m, i: m), cfg, CheckpointStore(tmp_path),
                                 initial_weights=lambda: REFERENCE)
    with pytest.raises(RuntimeError, match=r"no checkpoint .* to distribute: train first"):
        training.distribute()

    torch.manual_seed(0)
    weights = get_weights(model.Autoencoder(len(cfg.feature_names), members=2))
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(2, weights, None, 0.375, 0.99, None, cfg.feature_names), [], ClassHistograms())
    files_before = sorted(p.name for p in tmp_path.iterdir())
    sent: list[Message] = []

    def answer(msg: Message, i: int) -> Message:
        sent.append(msg)
        metrics = MetricRecord({"num-examples": 10})
        confusion_to_metrics(Confusion(tp=1, fp=0, tn=8, fn=1), metrics)
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    training = FederatedTraining(_Grid(answer), cfg, store, initial_weights=lambda: REFERENCE)
    out = training.distribute()
    assert out["round"] == 2 and out["devices_evaluated"] == 3
    assert out["device_confusion"] == {"tp": 3, "fp": 0, "tn": 24, "fn": 3}
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12, 13]
    assert {m.metadata.message_type for m in sent} == {"evaluate"}
    for m in sent:
        config = m.content.config_records["config"]
        assert (config["threshold"], config["server-round"]) == (0.375, 2)
        got = m.content.array_records["arrays"].to_numpy_ndarrays()
        assert [w.tobytes() for w in got] == [w.tobytes() for w in weights]
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # nothing checkpointed
