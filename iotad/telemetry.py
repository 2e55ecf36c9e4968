"""Every Prometheus metric of iotad, and how processes write and serve them.

Naming: ``iotad_<fl|edge>_<quantity>_<unit>``; counters end in ``_total``; units are base units
(``seconds``, ``bytes``, ``ratio``) or, for dimensionless numbers, what is counted (``rounds``,
``devices``, ``flows``, ...) or the score scale (``score`` = reconstruction error, ``loss``).
Labels come only from :data:`ALLOWED_LABELS`. Round numbers, IPs and flow ids are never labels.
Every ``edge`` metric carries ``device``; ``fl`` metrics carry no ``device`` label.

Process model
-------------
Two kinds of writers share one set of definitions:

* Long-lived processes serve ``/metrics``: the device agent (``iotad.agent``) and the aggregator's
  launcher/exporter. They call :func:`serve_metrics`.
* Short-lived processes only write: Flower starts one ``flwr-clientapp`` process per message on a
  device, and one ``flwr-serverapp`` process per run on the aggregator. They write through
  prometheus_client's multiprocess mode: every process keeps its values in
  ``$PROMETHEUS_MULTIPROC_DIR/<type>_<pid>.db`` (mmap files that outlive the process).

One directory per host (container), one server: the entrypoint exports ``PROMETHEUS_MULTIPROC_DIR``
for the SuperNode (Flower passes its environment down to every ClientApp) and the agent alike, and
wipes it before either starts (:func:`prepare_multiproc_dir`). The agent also writes in
multiprocess mode, so its own values land in the same directory, and :func:`serve_metrics` serves
only a :class:`~prometheus_client.multiprocess.MultiProcessCollector` over it: the union of the
agent and every ClientApp that ever ran, each series exactly once (serving the agent's in-memory
registry as well would count it twice). How values of several processes combine:

* counters and histograms: summed over all files, dead processes included (so they never drop);
* "state" gauges (train loss, model round, threshold, quality, ...): ``mostrecent``, the value
  written last by any process, alive or dead (a ``live*`` mode would drop a dead ClientApp's loss);
* ``iotad_fl_last_round_timestamp_seconds``: ``max``; ``iotad_fl_active_runs``: ``livesum``,
  written only by the launcher; files of dead processes in ``live*`` modes are removed at every
  scrape.

Multiprocess mode is chosen when the first metric is created: either ``PROMETHEUS_MULTIPROC_DIR`` is
set before the process starts (ClientApp, ServerApp), or the process calls
:func:`configure_multiprocess` before :func:`edge_metrics` / :func:`fl_metrics` (the agent). Metrics
are built by these factories, never at import, so a ClientApp never creates ``fl`` series and the
aggregator never creates ``edge`` series. Without the variable (tests, simulation, the CLI) metrics
live in an ordinary in-memory registry.

Examples
--------
Device agent (long-lived)::

    telemetry.configure_multiprocess("/run/iotad/metrics")   # same dir as the SuperNode's env
    server = telemetry.serve_metrics(9401, "0.0.0.0")
    dev = telemetry.DeviceTelemetry("device-1")
    dev.prime(reject_reasons=REJECT_REASONS)
    dev.model_loaded(model_round=3, threshold=0.012)
    dev.scored(errors, flagged, seconds=0.004)

ClientApp handler (one process per message; ``PROMETHEUS_MULTIPROC_DIR`` inherited)::

    dev = telemetry.DeviceTelemetry(telemetry.device_name())
    dev.clientapp_started()
    dev.trained(loss=res.epoch_losses[-1], samples=res.samples, epochs=len(res.epoch_losses),
                seconds=res.seconds)

Aggregator: the launcher serves and tracks runs, the ServerApp process records rounds::

    telemetry.configure_multiprocess("/run/iotad/metrics")          # launcher
    telemetry.serve_metrics(9400, "0.0.0.0")
    agg = telemetry.AggregatorTelemetry()
    agg.run_started(planned_rounds=10)            # or resumed_reason="superlink_restart"
    ...
    agg.run_finished()

    agg = telemetry.AggregatorTelemetry()                           # ServerApp, per round
    agg.round_started(rnd)
    agg.round_finished(seconds=dt, participating=n_ok, failed={"error": n_err, "missing": n_lost},
                       train_loss=loss, model_bytes=nbytes)
    agg.evaluated(evaluation.metrics_from_histograms(hists, threshold))
"""

from __future__ import annotations

import glob
import os
import socket
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEVICE_ENV = "IOTAD_DEVICE"
ALLOWED_LABELS = frozenset({"device", "phase", "reason", "attack_type"})
# Last token of a name (before ``_total``): a base unit, or what a dimensionless number counts.
UNITS = frozenset(
    {"seconds", "bytes", "ratio", "loss", "score", "round", "rounds", "devices", "runs", "samples",
     "epochs", "flows", "rows", "reloads"}
)
PHASES = ("train", "evaluate")
FAILURE_REASONS = ("error", "missing")
# Why the aggregator's launcher resubmitted a run from its checkpoint.
RESUME_RUN_FAILED = "run_failed"  # the run ended without finishing, the SuperLink still up
RESUME_SUPERLINK_RESTART = "superlink_restart"  # the SuperLink died and was restarted
RESUME_LAUNCHER_RESTART = "launcher_restart"  # the launcher itself started again mid-federation
RESUME_REASONS = (RESUME_RUN_FAILED, RESUME_SUPERLINK_RESTART, RESUME_LAUNCHER_RESTART)

Kind = Literal["counter", "gauge", "histogram"]
GaugeMode = Literal["all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent",
                    "livemostrecent"]

# Reconstruction errors (MSE of features scaled to [-1, 1]) span ~1e-6 (well-fit normal traffic)
# to ~4 (worst case); four buckets a decade keep the heatmap readable at 35 series per device.
SCORE_BUCKETS = tuple(float(f"{10.0 ** (k / 4):.3g}") for k in range(-24, 9))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# torch imports in 2 s on x86 and ~13 s on an emulated/slow arm64 box.
STARTUP_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)
TASK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class MetricSpec:
    """Definition of one metric; ``name`` is the exposed sample name (counters: with ``_total``)."""

    attr: str
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    mode: GaugeMode | None = None  # gauges only: how multiprocess mode combines processes
    buckets: tuple[float, ...] | None = None  # histograms only
    writer: str = ""  # which process writes it (documentation)

    @property
    def subsystem(self) -> str:
        return self.name.split("_")[1]


def _c(attr: str, name: str, help: str, labels: tuple[str, ...], writer: str) -> MetricSpec:
    return MetricSpec(attr, name, "counter", help, labels, writer=writer)


def _g(attr: str, name: str, help: str, labels: tuple[str, ...], writer: str,
       mode: GaugeMode = "mostrecent") -> MetricSpec:
    return MetricSpec(attr, name, "gauge", help, labels, mode=mode, writer=writer)


def _h(attr: str, name: str, help: str, labels: tuple[str, ...], writer: str,
       buckets: tuple[float, ...]) -> MetricSpec:
    return MetricSpec(attr, name, "histogram", help, labels, buckets=buckets, writer=writer)


_SA, _LA = "ServerApp", "launcher"
FL_SPECS: tuple[MetricSpec, ...] = (
    _g("current_round", "iotad_fl_current_round", "Round the federation is in (0 before the first).", (),
       _SA),
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
    _g("last_round_timestamp", "iotad_fl_last_round_timestamp_seconds",
       "Unix time of the last completed round, or of the run's (re)start if later.", (), f"{_SA}, {_LA}",
       mode="max"),
)

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
)


def catalogue() -> tuple[MetricSpec, ...]:
    """Return every metric iotad defines (aggregator first, then device)."""
    return FL_SPECS + EDGE_SPECS


def sample_names(spec: MetricSpec) -> tuple[str, ...]:
    """Return the series names a metric exposes (what PromQL may reference)."""
    if spec.kind == "counter":
        return (spec.name, spec.name.removesuffix("_total") + "_created")
    if spec.kind == "histogram":
        return tuple(spec.name + s for s in ("_bucket", "_sum", "_count", "_created"))
    return (spec.name,)


def catalogue_markdown() -> str:
    """Render the catalogue as a markdown table (docs/monitoring.md embeds it)."""
    rows = ["| metric | type | labels | multiprocess | written by | meaning |", "|---|---|---|---|---|---|"]
    for s in catalogue():
        labels = ", ".join(s.labels) or "-"
        rows.append(f"| `{s.name}` | {s.kind} | {labels} | {s.mode or 'sum'} | {s.writer} | {s.help} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------------
# Building metrics


class _Metrics:
    _specs: tuple[MetricSpec, ...] = ()

    def __init__(self, registry: CollectorRegistry) -> None:
        global _metrics_created
        _metrics_created = True
        for spec in self._specs:
            setattr(self, spec.attr, _build(spec, registry))


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry,
                     multiprocess_mode=spec.mode or "mostrecent")
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets or ())


class FLMetrics(_Metrics):
    """Aggregator metric families (attributes named after :data:`FL_SPECS`)."""

    _specs = FL_SPECS
    current_round: Gauge
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
    last_round_timestamp: Gauge


class EdgeMetrics(_Metrics):
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


_metrics_created = False
_FL_CACHE: weakref.WeakKeyDictionary[CollectorRegistry, FLMetrics] = weakref.WeakKeyDictionary()
_EDGE_CACHE: weakref.WeakKeyDictionary[CollectorRegistry, EdgeMetrics] = weakref.WeakKeyDictionary()


def make_registry() -> CollectorRegistry:
    """Return a fresh, empty registry (tests)."""
    return CollectorRegistry(auto_describe=True)


def fl_metrics(registry: CollectorRegistry | None = None) -> FLMetrics:
    """Return the aggregator metrics registered in ``registry`` (default: the global one), once each."""
    reg = REGISTRY if registry is None else registry
    if reg not in _FL_CACHE:
        _FL_CACHE[reg] = FLMetrics(reg)
    return _FL_CACHE[reg]


def edge_metrics(registry: CollectorRegistry | None = None) -> EdgeMetrics:
    """Return the device metrics registered in ``registry`` (default: the global one), once each."""
    reg = REGISTRY if registry is None else registry
    if reg not in _EDGE_CACHE:
        _EDGE_CACHE[reg] = EdgeMetrics(reg)
    return _EDGE_CACHE[reg]


# --------------------------------------------------------------------------------------------------
# Process model: multiprocess directory and /metrics server


def multiprocess_enabled() -> bool:
    """Whether metrics created now are written to ``$PROMETHEUS_MULTIPROC_DIR``."""
    return bool(getattr(_values.ValueClass, "_multiprocess", False))


def prepare_multiproc_dir(path: str | os.PathLike[str], *, wipe: bool = True) -> Path:
    """Create the multiprocess directory; ``wipe`` removes files of a previous boot.

    Call once per host before the SuperNode and agent start: stale files would add a previous
    container's counters to this one's (Prometheus sees no reset) and keep its gauges.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if wipe:
        for f in p.glob("*.db"):
            f.unlink(missing_ok=True)
    return p


def configure_multiprocess(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Write this process's metrics to a multiprocess directory (long-lived writers: agent, launcher).

    Sets ``PROMETHEUS_MULTIPROC_DIR`` (inherited by child processes) when ``path`` is given and
    switches prometheus_client to mmap-backed values. Must run before the first
    :func:`edge_metrics`/:func:`fl_metrics`. Returns the directory, or ``None`` when neither
    ``path`` nor the variable is set (in-memory mode stays).
    """
    if path is not None:
        os.environ[MULTIPROC_ENV] = str(path)
    target = os.environ.get(MULTIPROC_ENV)
    if not target:
        return None
    Path(target).mkdir(parents=True, exist_ok=True)
    if not multiprocess_enabled():
        if _metrics_created:
            raise RuntimeError("configure_multiprocess() must run before any iotad metric is created")
        # Documented prometheus_client hook (custom process identifiers use the same assignment).
        _values.ValueClass = _values.MultiProcessValue()
    return Path(target)


class _ReapingCollector(MultiProcessCollector):
    """MultiProcessCollector that first drops ``live*`` gauge files of processes that have exited."""

    def collect(self) -> Iterable[Any]:
        for f in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            pid = Path(f).stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), self._path)
        return super().collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (daemon thread); ``port`` is the bound port."""

    host: str
    port: int
    registry: CollectorRegistry
    _httpd: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(port: int, host: str = "127.0.0.1", multiproc_dir: str | os.PathLike[str] | None = None,
                  registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (port 0: any free port) from a daemon thread.

    With a multiprocess directory (``multiproc_dir`` or ``$PROMETHEUS_MULTIPROC_DIR``) it serves the
    union of every process's files, this one's included; otherwise ``registry`` (default: global).
    Containers pass ``host="0.0.0.0"``; the default keeps a developer's exporter off the network.
    """
    mp = str(multiproc_dir) if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV)
    if mp:
        if _metrics_created and not multiprocess_enabled():
            raise RuntimeError("metrics of this process are in memory and would not be served: "
                               "call configure_multiprocess() before creating them")
        reg = CollectorRegistry()
        _ReapingCollector(reg, path=mp)
    else:
        reg = REGISTRY if registry is None else registry
    httpd, _ = start_http_server(port, addr=host, registry=reg)
    return MetricsServer(host, int(httpd.server_port), reg, httpd)


# --------------------------------------------------------------------------------------------------
# Recording helpers: what the ClientApp, agent and aggregator call


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


def observe_many(histogram: Histogram, values: np.ndarray | Sequence[float]) -> None:
    """Observe many values at once (same result as ``observe`` per value, one write per bucket).

    Per-flow ``observe`` costs a lock and a mmap write per flow in multiprocess mode. Non-finite
    values are skipped (they would turn ``_sum`` into NaN/Inf for good).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, v, side="left"), minlength=len(bounds))
    for i, n in enumerate(counts[: len(bounds)]):
        if n:
            histogram._buckets[i].inc(float(n))
    histogram._sum.inc(float(v.sum()))


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

    def prime(self, reject_reasons: Iterable[str] = ()) -> None:
        """Create the agent's counters at 0 so rates and ratios exist before the first event."""
        m, d = self.metrics, self.device
        for c in (m.scored_flows, m.anomalous_flows, m.model_reloads):
            c.labels(device=d)
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
                    m.labelled_flows.labels(device=d, attack_type=name).inc(int(n))
                    m.labelled_anomalous_flows.labels(device=d, attack_type=name).inc(int(k))

    def rejected(self, counts: Mapping[str, int]) -> None:
        """Add rejected input rows per reason (``Traffic.rejected``)."""
        for reason, n in counts.items():
            if n:
                self.metrics.rejected_rows.labels(device=self.device, reason=reason).inc(n)


class AggregatorTelemetry:
    """Records the federation's metrics (ServerApp process and launcher)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.metrics = fl_metrics(registry)
        self._last_threshold: float | None = None

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
                m.attack_recall.labels(attack_type=attack).set(float(value))

    def threshold_set(self, threshold: float) -> None:
        """Publish the global threshold of a new round (and its change against the previous one).

        Call once per round; the first call of a process has no previous round to compare with.
        """
        self.metrics.threshold.set(threshold)
        if self._last_threshold:
            self.metrics.threshold_change.set((threshold - self._last_threshold) / self._last_threshold)
        self._last_threshold = threshold


if __name__ == "__main__":  # python -m iotad.telemetry: the catalogue for docs/monitoring.md
    print(catalogue_markdown(), end="")
