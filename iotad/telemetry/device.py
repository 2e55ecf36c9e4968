"""A device's metrics (``iotad_edge_*``, all labelled ``device``): written by its ClientApps and its agent."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from iotad.telemetry.spec import (
    LATENCY_BUCKETS,
    SCORE_BUCKETS,
    STARTUP_BUCKETS,
    TASK_BUCKETS,
    LabelBudget,
    MetricFamilies,
    MetricSpec,
    families,
    observe_many,
)
from iotad.telemetry.spec import counter_spec as _c
from iotad.telemetry.spec import gauge_spec as _g
from iotad.telemetry.spec import histogram_spec as _h

DEVICE_ENV = "IOTAD_DEVICE"

_D, _CA, _AG = ("device",), "ClientApp", "agent"
EDGE_SPECS: tuple[MetricSpec, ...] = (
    _g("train_loss", "iotad_edge_train_loss", "Local train loss (MSE) of the last epoch of the last round.",
       _D, _CA),
    _c("train_samples", "iotad_edge_train_samples_total",
       "Rows local training used, once per train call (not per epoch).", _D, _CA),
    _c("train_epochs", "iotad_edge_train_epochs_total", "Local epochs run.", _D, _CA),
    _h("task_duration", "iotad_edge_task_duration_seconds",
       "Time a ClientApp spends in its handler, phase train or evaluate.", (*_D, "phase"), _CA,
       TASK_BUCKETS),
    _h("clientapp_startup", "iotad_edge_clientapp_startup_seconds",
       "Process start to handler entry of a ClientApp (interpreter + imports).", _D, _CA, STARTUP_BUCKETS),
    _g("model_round", "iotad_edge_model_round", "Round of the global model the detector uses (0: none).",
       _D, _AG),
    _g("threshold", "iotad_edge_threshold_score", "Threshold (reconstruction error) the detector uses.", _D,
       _AG),
    _c("model_reloads", "iotad_edge_model_reloads_total", "Model bundles (re)loaded by the detector.", _D,
       _AG),
    _c("scored_flows", "iotad_edge_scored_flows_total", "Flows scored by the detector.", _D, _AG),
    _c("anomalous_flows", "iotad_edge_anomalous_flows_total", "Flows flagged as anomalous (score above "
       "threshold).", _D, _AG),
    _c("labelled_flows", "iotad_edge_labelled_flows_total",
       "Scored flows whose true type is known (labelled replay), by type; Normal included.",
       (*_D, "attack_type"), _AG),
    _c("labelled_anomalous_flows", "iotad_edge_labelled_anomalous_flows_total",
       "Flagged flows whose true type is known (labelled replay), by type.", (*_D, "attack_type"), _AG),
    _h("anomaly_score", "iotad_edge_anomaly_score", "Anomaly score (reconstruction error) per flow.", _D,
       _AG, SCORE_BUCKETS),
    _h("detection_latency", "iotad_edge_detection_latency_seconds",
       "Time to preprocess and score one batch of flows.", _D, _AG, LATENCY_BUCKETS),
    _c("rejected_rows", "iotad_edge_rejected_rows_total", "Input rows rejected before scoring, by reason.",
       (*_D, "reason"), _AG),
    _c("window_evictions", "iotad_edge_window_evicted_keys_total",
       "Tracked hosts, pairs or connections dropped from the full window tables (stalest first).", _D, _AG),
    _g("window_keys", "iotad_edge_window_tracked_keys", "Hosts, pairs and connections the window tables track.",
       _D, _AG),
    _g("backlog", "iotad_edge_backlog_bytes",
       "Traffic captured but not scored yet (a tailed capture file's unread bytes): how far behind the agent is.",
       _D, _AG),
    _c("shed_rows", "iotad_edge_shed_rows_total",
       "Rows dropped unscored because the agent fell behind a paced replay (load shed).", _D, _AG),
    _c("window_clock_fixes", "iotad_edge_window_clock_fixed_rows_total",
       "Rows whose capture time was held at the previous one: clamped (went backwards) or bad_time "
       "(unreadable).", (*_D, "reason"), _AG),
)


class EdgeMetrics(MetricFamilies):
    """Device metric families (attributes named after :data:`EDGE_SPECS`); all carry ``device``."""

    _specs = EDGE_SPECS
    train_loss: Gauge
    train_samples: Counter
    train_epochs: Counter
    task_duration: Histogram
    clientapp_startup: Histogram
    model_round: Gauge
    threshold: Gauge
    model_reloads: Counter
    scored_flows: Counter
    anomalous_flows: Counter
    labelled_flows: Counter
    labelled_anomalous_flows: Counter
    anomaly_score: Histogram
    detection_latency: Histogram
    rejected_rows: Counter
    window_evictions: Counter
    window_keys: Gauge
    backlog: Gauge
    shed_rows: Counter
    window_clock_fixes: Counter


#: ``edge_metrics(registry=None)``: the device metrics in ``registry`` (default: the global one), once each.
edge_metrics = partial(families, EdgeMetrics)


def device_name(default: str | None = None) -> str:
    """Device label value: ``$IOTAD_DEVICE``, else ``default``, else the host name.

    The agent and the ClientApps of one device must use the same value, or the union shows two
    devices.
    """
    return os.environ.get(DEVICE_ENV) or default or socket.gethostname()


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or ``None`` where unknown."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_startup_recorded = False


class DeviceTelemetry:
    """Records one device's metrics; every series gets ``device=<name>``.

    Series are created on first use, so a ClientApp only adds the series it writes.
    """

    def __init__(self, device: str, registry: CollectorRegistry | None = None) -> None:
        if not device:
            raise ValueError("device name must not be empty")
        self.device = device
        self.metrics = edge_metrics(registry)
        self._attack_type = LabelBudget()

    def prime(self, reject_reasons: Iterable[str] = ()) -> None:
        """Create the agent's counters at 0 so rates and ratios exist before the first event."""
        m, d = self.metrics, self.device
        for c in (m.scored_flows, m.anomalous_flows, m.model_reloads, m.shed_rows):
            c.labels(device=d)
        m.backlog.labels(device=d).set(0)
        m.detection_latency.labels(device=d)
        m.anomaly_score.labels(device=d)
        for r in reject_reasons:
            m.rejected_rows.labels(device=d, reason=r)

    # ClientApp --------------------------------------------------------------------------------------
    def clientapp_started(self, seconds: float | None = None) -> None:
        """Record ClientApp start-up: ``seconds``, or measured from ``/proc`` once per process.

        Call at handler entry. The measured value is recorded only by the first call of a process
        (the simulation engine reuses worker processes for many messages).
        """
        global _startup_recorded
        if seconds is None:
            if _startup_recorded:
                return
            seconds = process_age_seconds()
            _startup_recorded = True
        if seconds is not None:
            self.metrics.clientapp_startup.labels(device=self.device).observe(seconds)

    def trained(self, *, loss: float, samples: int, epochs: int, seconds: float) -> None:
        """Record a local training call (one train message)."""
        m, d = self.metrics, self.device
        m.train_loss.labels(device=d).set(loss)
        m.train_samples.labels(device=d).inc(samples)
        m.train_epochs.labels(device=d).inc(epochs)
        m.task_duration.labels(device=d, phase="train").observe(seconds)

    def evaluated(self, *, seconds: float) -> None:
        """Record a local evaluation call (one evaluate message)."""
        self.metrics.task_duration.labels(device=self.device, phase="evaluate").observe(seconds)

    # Agent ------------------------------------------------------------------------------------------
    def model_loaded(self, *, model_round: int, threshold: float) -> None:
        """Record that the detector (re)loaded a global model bundle."""
        m, d = self.metrics, self.device
        m.model_round.labels(device=d).set(model_round)
        m.threshold.labels(device=d).set(threshold)
        m.model_reloads.labels(device=d).inc()

    def scored(self, scores: np.ndarray, flagged: np.ndarray, *, seconds: float,
               attack_types: Sequence[str] | np.ndarray | None = None) -> None:
        """Record one scored batch: scores, 0/1 flags, batch latency, true types if replaying labels.

        ``attack_types`` holds the dataset's traffic type per flow ("Normal" or an attack); empty
        strings (unlabelled rows) are not counted in the labelled counters.
        """
        m, d = self.metrics, self.device
        flags = np.asarray(flagged).astype(bool).ravel()
        m.scored_flows.labels(device=d).inc(flags.size)
        m.anomalous_flows.labels(device=d).inc(int(flags.sum()))
        observe_many(m.anomaly_score.labels(device=d), scores)
        m.detection_latency.labels(device=d).observe(seconds)
        if attack_types is not None:
            types = np.asarray(attack_types, dtype=object).ravel()
            names, inverse = np.unique(types.astype(str), return_inverse=True)
            total = np.bincount(inverse, minlength=len(names))
            hits = np.bincount(inverse, weights=flags, minlength=len(names))
            for name, n, k in zip(names, total, hits, strict=True):
                if name:
                    label = self._attack_type(str(name))
                    m.labelled_flows.labels(device=d, attack_type=label).inc(int(n))
                    m.labelled_anomalous_flows.labels(device=d, attack_type=label).inc(int(k))

    def windows(self, *, evicted: int, tracked: int, clamped: int, bad_time: int) -> None:
        """Record the window stage's state after a batch: new evictions and clock fixes, keys tracked."""
        m, d = self.metrics, self.device
        m.window_evictions.labels(device=d).inc(evicted)
        m.window_keys.labels(device=d).set(tracked)
        for reason, n in (("clamped", clamped), ("bad_time", bad_time)):
            m.window_clock_fixes.labels(device=d, reason=reason).inc(n)

    def load(self, *, backlog_bytes: int, shed_rows: int) -> None:
        """Record how far behind the traffic the agent is, and rows it had to drop."""
        m, d = self.metrics, self.device
        m.backlog.labels(device=d).set(backlog_bytes)
        m.shed_rows.labels(device=d).inc(shed_rows)

    def rejected(self, counts: Mapping[str, int]) -> None:
        """Add rejected input rows per reason (``Traffic.rejected``)."""
        for reason, n in counts.items():
            if n:
                self.metrics.rejected_rows.labels(device=self.device, reason=reason).inc(n)


