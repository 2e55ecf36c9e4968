"""The federation's metrics (``iotad_fl_*``): written by the aggregator launcher and the ServerApp."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from iotad.telemetry.spec import ROUND_BUCKETS, LabelBudget, MetricFamilies, MetricSpec, families
from iotad.telemetry.spec import counter_spec as _c
from iotad.telemetry.spec import gauge_spec as _g
from iotad.telemetry.spec import histogram_spec as _h

# What the ServerApp is doing: before round 1 (scaling, global normalisation only), in a round, after the last.
ROUND_PHASES = ("scaling", "train", "residual", "calibrate", "evaluate", "checkpoint", "distribute", "done")
FAILURE_REASONS = ("error", "missing")
# Why the aggregator's launcher resubmitted a run from its checkpoint.
RESUME_RUN_FAILED = "run_failed"  # the run ended without finishing, the SuperLink still up
RESUME_SUPERLINK_RESTART = "superlink_restart"  # the SuperLink died and was restarted
RESUME_LAUNCHER_RESTART = "launcher_restart"  # the launcher itself started again mid-federation
RESUME_REASONS = (RESUME_RUN_FAILED, RESUME_SUPERLINK_RESTART, RESUME_LAUNCHER_RESTART)

_SA, _LA = "ServerApp", "launcher"
FL_SPECS: tuple[MetricSpec, ...] = (
    _g("current_round", "iotad_fl_current_round", "Round the federation is in (0 before the first).", (),
       _SA),
    _g("phase", "iotad_fl_round_phase_state",
       "1 for what the ServerApp is doing (scaling, train, residual, calibrate, evaluate, checkpoint, "
       "distribute, done), 0 for the rest.", ("phase",), _SA),
    _g("planned_rounds", "iotad_fl_planned_rounds", "Rounds the current run was started for.", (), _LA),
    _c("completed_rounds", "iotad_fl_completed_rounds_total", "Rounds completed (train + evaluate).", (),
       _SA),
    _h("round_duration", "iotad_fl_round_duration_seconds", "Wall time of one round, train to evaluate.",
       (), _SA, ROUND_BUCKETS),
    _g("last_round_duration", "iotad_fl_last_round_duration_seconds", "Wall time of the last round.", (),
       _SA),
    _g("participating_devices", "iotad_fl_round_participating_devices",
       "Devices that returned a train reply in the last round.", (), _SA),
    _g("failed_devices", "iotad_fl_round_failed_devices",
       "Devices sampled in the last round that failed or did not reply.", (), _SA),
    _c("device_failures", "iotad_fl_failed_devices_total",
       "Device replies lost per round; reason: error (error reply) or missing (no reply).", ("reason",),
       _SA),
    _g("train_loss", "iotad_fl_train_loss", "Sample-weighted mean of the devices' last-epoch train loss.",
       (), _SA),
    _g("precision", "iotad_fl_precision_ratio", "Global precision of the federated evaluation.", (), _SA),
    _g("recall", "iotad_fl_recall_ratio", "Global recall (detection rate) of the federated evaluation.", (),
       _SA),
    _g("f1", "iotad_fl_f1_ratio", "Global F1 of the federated evaluation.", (), _SA),
    _g("fpr", "iotad_fl_fpr_ratio", "Global false-positive rate of the federated evaluation.", (), _SA),
    _g("roc_auc", "iotad_fl_roc_auc_ratio", "Global ROC-AUC (from merged score histograms).", (), _SA),
    _g("pr_auc", "iotad_fl_pr_auc_ratio", "Global PR-AUC (from merged score histograms).", (), _SA),
    _g("attack_recall", "iotad_fl_attack_recall_ratio", "Global recall per attack type.", ("attack_type",),
       _SA),
    _g("threshold", "iotad_fl_threshold_score", "Global detection threshold (reconstruction error).", (),
       _SA),
    _g("threshold_change", "iotad_fl_threshold_change_ratio",
       "Relative change of the global threshold against the previous round: (new - old) / old.", (), _SA),
    _g("model_size", "iotad_fl_model_size_bytes", "Size of the global model parameters.", (), _SA),
    _c("started_runs", "iotad_fl_started_runs_total", "Runs submitted from scratch.", (), _LA),
    _c("resumed_runs", "iotad_fl_resumed_runs_total",
       "Runs resubmitted from the last checkpoint; reason run_failed, superlink_restart or launcher_restart.",
       ("reason",), _LA),
    _g("active_runs", "iotad_fl_active_runs", "1 while the launcher has a run in progress.", (), _LA,
       mode="livesum"),
    _c("delivered_devices", "iotad_fl_model_delivered_devices_total",
       "Model deliveries outside training: devices a distribute run sent the latest model to (late joiners, "
       "after a restart; a device can count more than once).", (),
       _SA),
    _g("last_round_timestamp", "iotad_fl_last_round_timestamp_seconds",
       "Unix time of the last completed round, or of the run's (re)start if later.", (), f"{_SA}, {_LA}",
       mode="max"),
)


class FLMetrics(MetricFamilies):
    """Aggregator metric families (attributes named after :data:`FL_SPECS`)."""

    _specs = FL_SPECS
    current_round: Gauge
    phase: Gauge
    planned_rounds: Gauge
    completed_rounds: Counter
    round_duration: Histogram
    last_round_duration: Gauge
    participating_devices: Gauge
    failed_devices: Gauge
    device_failures: Counter
    train_loss: Gauge
    precision: Gauge
    recall: Gauge
    f1: Gauge
    fpr: Gauge
    roc_auc: Gauge
    pr_auc: Gauge
    attack_recall: Gauge
    threshold: Gauge
    threshold_change: Gauge
    model_size: Gauge
    started_runs: Counter
    resumed_runs: Counter
    active_runs: Gauge
    delivered_devices: Counter
    last_round_timestamp: Gauge


#: ``fl_metrics(registry=None)``: the aggregator metrics in ``registry`` (default: the global one), once each.
fl_metrics = partial(families, FLMetrics)


class AggregatorTelemetry:
    """Records the federation's metrics (ServerApp process and launcher)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.metrics = fl_metrics(registry)
        self._last_threshold: float | None = None
        self._attack_type = LabelBudget()

    # Launcher ---------------------------------------------------------------------------------------
    def run_started(self, *, planned_rounds: int, resumed_reason: str | None = None) -> None:
        """A run was submitted (``resumed_reason`` set: resubmitted from a checkpoint)."""
        m = self.metrics
        if resumed_reason is None:
            m.started_runs.inc()
        # Touch every reason: a fresh federation shows 0 resumes instead of no series at all.
        for reason in dict.fromkeys((*RESUME_REASONS, *([resumed_reason] if resumed_reason else []))):
            m.resumed_runs.labels(reason=reason).inc(1 if reason == resumed_reason else 0)
        m.planned_rounds.set(planned_rounds)
        m.active_runs.set(1)
        # Start of the stall clock: without it a run that never completes a round looks fine.
        m.last_round_timestamp.set(time.time())

    def run_finished(self) -> None:
        """The launcher has no run in progress any more."""
        self.metrics.active_runs.set(0)

    # ServerApp --------------------------------------------------------------------------------------
    def round_started(self, server_round: int) -> None:
        self.metrics.current_round.set(server_round)

    def delivered(self, devices: int) -> None:
        """The latest checkpoint went to ``devices`` devices without training (``distribute`` run)."""
        self.metrics.delivered_devices.inc(devices)

    def phase_entered(self, server_round: int, phase: str) -> None:
        """The ServerApp entered ``phase`` (one of :data:`ROUND_PHASES`) of ``server_round``."""
        if server_round > 0:
            self.round_started(server_round)
        for name in ROUND_PHASES:
            self.metrics.phase.labels(phase=name).set(1 if name == phase else 0)

    def round_finished(self, *, seconds: float, participating: int, failed: Mapping[str, int] | None = None,
                       train_loss: float | None = None, model_bytes: int | None = None) -> None:
        """A round completed; ``failed`` maps reason (``error``/``missing``) to devices lost."""
        m = self.metrics
        failed = failed or {}
        m.completed_rounds.inc()
        m.round_duration.observe(seconds)
        m.last_round_duration.set(seconds)
        m.participating_devices.set(participating)
        m.failed_devices.set(sum(failed.values()))
        # Touch every reason: increase() cannot see a series' first sample as an increase.
        for reason in dict.fromkeys((*FAILURE_REASONS, *failed)):
            m.device_failures.labels(reason=reason).inc(failed.get(reason, 0))
        if train_loss is not None:
            m.train_loss.set(train_loss)
        if model_bytes is not None:
            m.model_size.set(model_bytes)
        m.last_round_timestamp.set(time.time())

    def evaluated(self, metrics: Mapping[str, Any]) -> None:
        """Publish the federated evaluation (the dict of ``evaluation.metrics_from_histograms``)."""
        m = self.metrics
        for key, gauge in (("precision", m.precision), ("recall", m.recall), ("f1", m.f1), ("fpr", m.fpr),
                           ("roc_auc", m.roc_auc), ("pr_auc", m.pr_auc)):
            if metrics.get(key) is not None:
                gauge.set(float(metrics[key]))
        if metrics.get("threshold") is not None:
            self.threshold_set(float(metrics["threshold"]))
        for attack, value in (metrics.get("per_attack_recall") or {}).items():
            if value is not None:
                m.attack_recall.labels(attack_type=self._attack_type(attack)).set(float(value))

    def threshold_set(self, threshold: float) -> None:
        """Publish the global threshold of a new round (and its change against the previous one).

        Call once per round; the first call of a process has no previous round to compare with.
        """
        self.metrics.threshold.set(threshold)
        if self._last_threshold:
            self.metrics.threshold_change.set((threshold - self._last_threshold) / self._last_threshold)
        self._last_threshold = threshold

