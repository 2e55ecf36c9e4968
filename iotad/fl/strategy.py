"""Server-side federation: Flower strategies plus the federated scaler and threshold.

A Flower strategy (FedAvg, FedProx, FedMedian, FedTrimmedAvg or Krum from
``flwr.serverapp.strategy``) samples nodes and aggregates weights. Around it,
:class:`FederatedTraining` adds what an anomaly detector needs and a plain
strategy does not: a scaling phase before round 1, a calibration phase after each
aggregation (merged error histograms -> global threshold), an evaluation phase on
merged histograms and confusion counts, screening of poisoned updates, and a
checkpoint per round from which a lost run resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from iotad.core.evaluation import ClassHistograms, metrics_from_histograms
from iotad.core.normalisation import GLOBAL, LOCAL, AnyScaler, check_normalisation
from iotad.core.preprocessing import FeatureStats, ResidualScale, Scaler
from iotad.core.shapes import DEFAULT_MEMBERS
from iotad.core.threshold import threshold_from_histogram
from iotad.features.sets import DEFAULT_FEATURE_SET, feature_names
from iotad.fl.checkpoint import Checkpoint, CheckpointStore, RoundRecord
from iotad.fl.records import (
    config_float,
    confusion_from_metrics,
    histograms_from_metrics,
    residual_from_metrics,
    residual_to_config,
    scaler_to_config,
    stats_from_metrics,
)
from iotad.fl.screening import in_content_order, screen_updates

log = logging.getLogger(__name__)

STRATEGIES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum")


@dataclass(frozen=True)
class FederationConfig:
    """The run config (``[tool.flwr.app.config]``, kebab-case keys) the ServerApp uses."""

    num_rounds: int = 30
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    min_replies: int = 1
    local_epochs: int = 2
    batch_size: int = 256
    learning_rate: float = 4e-3
    proximal_mu: float = 0.01
    trim_beta: float = 0.2
    krum_malicious: int = 0
    quantile: float = 0.99
    split_seed: int = 0
    model_seed: int = 0
    members: int = DEFAULT_MEMBERS
    feature_set: str = DEFAULT_FEATURE_SET
    normalisation: str = LOCAL
    data_dir: str = ""
    device_model_root: str = ""  # simulation: devices write their bundles to ROOT/<device>/model
    checkpoint_dir: str = "runs/federated"
    resume: bool = True
    round_timeout: float = 900.0
    distribute: bool = False  # no training: hand the latest checkpoint to every connected device

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        known = {f.replace("_", "-"): f for f in cls.__dataclass_fields__}
        known["num-server-rounds"] = "num_rounds"
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            if key in known:
                name = known[key]
                kwargs[name] = type(getattr(cls, name))(value)
        cfg = cls(**kwargs)
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        check_normalisation(cfg.normalisation)
        feature_names(cfg.feature_set)  # validates
        return cfg

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.feature_set)


def make_strategy(cfg: FederationConfig) -> FedAvg:
    """The Flower strategy named by the run config."""
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes,
        "min_available_nodes": cfg.min_nodes,
    }
    if cfg.strategy == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedmedian":
        return FedMedian(**common)
    if cfg.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    if cfg.strategy == "krum":
        return Krum(**common, num_malicious_nodes=cfg.krum_malicious)
    return FedAvg(**common)


def _metrics(reply: Message) -> MetricRecord:
    """The one MetricRecord of a device's reply."""
    return next(iter(reply.content.metric_records.values()))


class FederatedTraining:
    """Runs the phases of a federated detector around a Flower strategy."""

    def __init__(
        self,
        grid: Grid,
        cfg: FederationConfig,
        store: CheckpointStore,
        *,
        initial_weights: Callable[[], list[np.ndarray]],
        on_round: Callable[[RoundRecord], None] | None = None,
        on_phase: Callable[[int, str], None] | None = None,
    ) -> None:
        self.grid = grid
        self.cfg = cfg
        self.store = store
        self.strategy = make_strategy(cfg)
        self.initial_weights = initial_weights
        self.on_round = on_round
        self.on_phase = on_phase

    def _phase(self, server_round: int, phase: str) -> None:
        if self.on_phase is not None:
            self.on_phase(server_round, phase)

    # -- messaging -------------------------------------------------------------------
    def _config(self, scaler: AnyScaler | None, server_round: int, **extra: Any) -> ConfigRecord:
        config = ConfigRecord(
            {
                "server-round": server_round,
                "num-server-rounds": self.cfg.num_rounds,
                "model-seed": self.cfg.model_seed,
                "local-epochs": self.cfg.local_epochs,
                "batch-size": self.cfg.batch_size,
                "learning-rate": self.cfg.learning_rate,
                "quantile": self.cfg.quantile,
                "split-seed": self.cfg.split_seed,
                "feature-set": self.cfg.feature_set,
                "normalisation": self.cfg.normalisation,
                **extra,
            }
        )
        if self.cfg.data_dir:
            config["data-dir"] = self.cfg.data_dir
        if self.cfg.device_model_root:
            config["device-model-root"] = self.cfg.device_model_root
        if scaler is not None:  # global normalisation: the merged scaler travels; local: each device fits its own
            scaler_to_config(scaler, config)
        return config

    def _query_all(self, action: str, content: RecordDict, node_ids: Iterable[int]) -> list[Message]:
        messages = [Message(content=content, dst_node_id=n, message_type=f"query.{action}") for n in node_ids]
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout)
        return in_content_order(r for r in replies if not r.has_error())

    def _wait_for_nodes(self) -> list[int]:
        while len(nodes := list(self.grid.get_node_ids())) < self.cfg.min_nodes:
            log.info("waiting for devices: %d of %d connected", len(nodes), self.cfg.min_nodes)
            time.sleep(1.0)
        return nodes

    # -- phases ----------------------------------------------------------------------
    def federated_scaler(self) -> Scaler:
        """Phase 0: merge every device's feature statistics into the global scaler."""
        nodes = self._wait_for_nodes()
        config = ConfigRecord({"split-seed": self.cfg.split_seed, "feature-set": self.cfg.feature_set})
        if self.cfg.data_dir:
            config["data-dir"] = self.cfg.data_dir
        replies = self._query_all("feature_stats", RecordDict({"config": config}), nodes)
        if len(replies) < self.cfg.min_nodes:
            raise RuntimeError(f"only {len(replies)} devices sent feature statistics; need {self.cfg.min_nodes}")
        return Scaler.from_stats(FeatureStats.merge_all([stats_from_metrics(_metrics(r)) for r in replies]))

    def residual_scale(self, arrays: ArrayRecord, scaler: AnyScaler, server_round: int) -> ResidualScale:
        """Merge the devices' per-feature residual statistics: the weights of the anomaly score."""
        nodes = self._wait_for_nodes()
        content = RecordDict({"arrays": arrays, "config": self._config(scaler, server_round)})
        replies = self._query_all("residual_stats", content, nodes)
        if not replies:
            raise RuntimeError("no device returned residual statistics")
        return ResidualScale.merge_all([residual_from_metrics(_metrics(r)) for r in replies])

    def calibrate(
        self, arrays: ArrayRecord, scaler: AnyScaler | None, residual: ResidualScale | None, server_round: int
    ) -> tuple[float, int]:
        """Merge the devices' calibration histograms; the threshold is their quantile."""
        nodes = self._wait_for_nodes()
        config = self._config(scaler, server_round)
        if residual is not None:
            residual_to_config(residual, config)
        replies = self._query_all("calibrate", RecordDict({"arrays": arrays, "config": config}), nodes)
        hists = [np.asarray(_metrics(r)["hist.calibration"]) for r in replies]
        if not hists:
            raise RuntimeError("no device returned a calibration histogram")
        return threshold_from_histogram(np.sum(hists, axis=0), self.cfg.quantile), len(replies)

    def evaluate(
        self, arrays: ArrayRecord, scaler: AnyScaler | None, residual: ResidualScale | None, threshold: float,
        server_round: int,
    ) -> tuple[dict[str, Any], ClassHistograms]:
        """Global metrics from merged per-class histograms; devices also keep the bundle."""
        config = self._config(scaler, server_round, threshold=threshold)
        if residual is not None:
            residual_to_config(residual, config)
        messages = self.strategy.configure_evaluate(server_round, arrays, config, self.grid)
        replies = [
            r for r in self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout) if not r.has_error()
        ]
        merged = ClassHistograms({})
        tp = fp = tn = fn = 0
        for reply in replies:
            m = _metrics(reply)
            merged = merged.merge(histograms_from_metrics(m))
            c = confusion_from_metrics(m)
            tp, fp, tn, fn = tp + c.tp, fp + c.fp, tn + c.tn, fn + c.fn
        metrics = metrics_from_histograms(merged, threshold)
        # The devices' own counts at the same threshold must agree with the merged histograms.
        metrics["device_confusion"] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
        metrics["devices_evaluated"] = len(replies)
        return metrics, merged

    def _check_features(self, latest: Checkpoint) -> None:
        if latest.feature_names and latest.feature_names != self.cfg.feature_names:
            raise RuntimeError(f"the checkpoint in {self.store.root} was trained on other features than "
                               f"feature-set {self.cfg.feature_set!r}: remove it or set resume = false")

    def distribute(self) -> dict[str, Any]:
        """Hand the latest checkpoint to every connected device, e.g. devices that joined after training.

        It is the final round's evaluate again: each device fits its own normalisation (or takes the
        merged one), writes its bundle for the agent and reports its confusion counts. Nothing is
        trained and nothing is checkpointed."""
        latest = self.store.latest()
        if latest is None:
            raise RuntimeError(f"no checkpoint in {self.store.root} to distribute: train first")
        self._check_features(latest)
        self._wait_for_nodes()
        self._phase(latest.round, "distribute")
        metrics, _ = self.evaluate(ArrayRecord.from_numpy_ndarrays(latest.weights), latest.scaler, latest.residual,
                                   latest.threshold, latest.round)
        self._phase(latest.round, "done")
        metrics["round"] = latest.round
        return metrics

    # -- the run ---------------------------------------------------------------------
    def run(self) -> list[RoundRecord]:
        latest = self.store.latest() if self.cfg.resume else None
        if latest is not None:
            log.info("resuming from the round %d checkpoint", latest.round)
            self._check_features(latest)
            weights, scaler, start, history = (latest.weights, latest.scaler, latest.round,
                                                self.store.history(up_to=latest.round))
        else:
            # Global normalisation merges the devices' statistics into one scaler first; local needs none here.
            if self.cfg.normalisation == GLOBAL:
                self._phase(0, "scaling")
            scaler = self.federated_scaler() if self.cfg.normalisation == GLOBAL else None
            weights, start, history = self.initial_weights(), 0, []
        arrays = ArrayRecord.from_numpy_ndarrays(weights)

        for server_round in range(start + 1, self.cfg.num_rounds + 1):
            t0 = time.monotonic()
            self._phase(server_round, "train")
            config = self._config(scaler, server_round)
            messages = list(self.strategy.configure_train(server_round, arrays, config, self.grid))
            replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
            valid, rejected = screen_updates(replies, arrays.to_numpy_ndarrays())
            if len(valid) < self.cfg.min_replies:
                raise RuntimeError(f"round {server_round}: {len(valid)} usable updates of {len(messages)}, "
                                   f"min-replies is {self.cfg.min_replies} (rejected: {dict(rejected)})")
            if rejected:
                log.warning("round %d: %d of %d updates rejected %s; going on with the rest", server_round,
                            sum(rejected.values()), len(messages), dict(rejected))
            aggregated, train_metrics = self.strategy.aggregate_train(server_round, in_content_order(valid))
            if aggregated is None:
                raise RuntimeError(f"round {server_round}: no usable update (rejected: {dict(rejected)})")
            arrays = aggregated
            residual = None
            if scaler is not None:
                self._phase(server_round, "residual")
                residual = self.residual_scale(arrays, scaler, server_round)
            self._phase(server_round, "calibrate")
            threshold, _ = self.calibrate(arrays, scaler, residual, server_round)
            self._phase(server_round, "evaluate")
            metrics, histograms = self.evaluate(arrays, scaler, residual, threshold, server_round)
            record = RoundRecord(
                round=server_round,
                train_loss=config_float(train_metrics, "train-loss") if train_metrics else None,
                devices_participating=len(valid),
                devices_failed=len(messages) - len(valid),
                rejected_updates=dict(rejected),
                threshold=threshold,
                metrics=metrics,
                duration_seconds=time.monotonic() - t0,
                model_bytes=int(arrays.count_bytes()),
            )
            history.append(record)
            self._phase(server_round, "checkpoint")
            self.store.save(
                Checkpoint(server_round, arrays.to_numpy_ndarrays(), scaler, threshold, self.cfg.quantile, residual,
                           self.cfg.feature_names),
                history,
                histograms,
            )
            if self.on_round is not None:
                self.on_round(record)
        self._phase(self.cfg.num_rounds, "done")
        return history

