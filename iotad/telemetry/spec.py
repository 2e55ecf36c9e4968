"""Metric definitions shared by every process: :class:`MetricSpec`, labels, units, buckets, builders.

The metrics themselves live next to the process that exports them: :mod:`iotad.telemetry.federation`
(aggregator launcher and ServerApp) and :mod:`iotad.telemetry.device` (ClientApp and agent).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

ALLOWED_LABELS = frozenset({"device", "phase", "reason", "attack_type"})
#: Distinct ``attack_type`` values a process exports; further names (types outside the dataset's 14
#: come from the data and are unbounded) share the label "other".
MAX_ATTACK_TYPES = 32


class LabelBudget:
    """The first ``limit`` distinct values of a label pass; later new ones become ``other``."""

    def __init__(self, limit: int = MAX_ATTACK_TYPES, other: str = "other") -> None:
        self.limit, self.other = limit, other
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return self.other
# Last token of a name (before ``_total``): a base unit, or what a dimensionless number counts
# ("state": a state set, 1 for the label value that holds and 0 for the others).
UNITS = frozenset(
    {"seconds", "bytes", "ratio", "loss", "score", "round", "rounds", "devices", "runs", "samples",
     "epochs", "flows", "rows", "reloads", "keys", "state"}
)

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


def counter_spec(attr: str, name: str, help: str, labels: tuple[str, ...], writer: str) -> MetricSpec:
    return MetricSpec(attr, name, "counter", help, labels, writer=writer)


def gauge_spec(attr: str, name: str, help: str, labels: tuple[str, ...], writer: str,
               mode: GaugeMode = "mostrecent") -> MetricSpec:
    return MetricSpec(attr, name, "gauge", help, labels, mode=mode, writer=writer)


def histogram_spec(attr: str, name: str, help: str, labels: tuple[str, ...], writer: str,
                   buckets: tuple[float, ...]) -> MetricSpec:
    return MetricSpec(attr, name, "histogram", help, labels, buckets=buckets, writer=writer)


def sample_names(spec: MetricSpec) -> tuple[str, ...]:
    """Return the series names a metric exposes (what PromQL may reference)."""
    if spec.kind == "counter":
        return (spec.name, spec.name.removesuffix("_total") + "_created")
    if spec.kind == "histogram":
        return tuple(spec.name + s for s in ("_bucket", "_sum", "_count", "_created"))
    return (spec.name,)


_created = False


def metrics_created() -> bool:
    """Whether this process has created any iotad metric (multiprocess mode must be chosen before)."""
    return _created


F = TypeVar("F", bound="MetricFamilies")
_FAMILIES: dict[type[MetricFamilies], weakref.WeakKeyDictionary[CollectorRegistry, Any]] = {}


def families(cls: type[F], registry: CollectorRegistry | None = None) -> F:
    """Return the ``cls`` metrics registered in ``registry`` (default: the global one), created once each."""
    reg = REGISTRY if registry is None else registry
    cache = _FAMILIES.setdefault(cls, weakref.WeakKeyDictionary())
    if reg not in cache:
        cache[reg] = cls(reg)
    return cast(F, cache[reg])


class MetricFamilies:
    """Base of a process's metric families: one attribute per spec of ``_specs``."""

    _specs: tuple[MetricSpec, ...] = ()

    def __init__(self, registry: CollectorRegistry) -> None:
        global _created
        _created = True
        for spec in self._specs:
            setattr(self, spec.attr, _build(spec, registry))


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry,
                     multiprocess_mode=spec.mode or "mostrecent")
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets or ())


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


