"""Federated state <-> Flower records (the only place that knows both sides).

Scaling statistics, histograms and confusion counts travel as ``MetricRecord``
lists; the global scaler travels in the ``ConfigRecord`` as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, MetricRecord

from iotad.core.evaluation import ClassHistograms, Confusion
from iotad.core.normalisation import AnyScaler, scaler_from_dict
from iotad.core.preprocessing import FeatureStats, ResidualScale

HIST_PREFIX = "hist."
CONFUSION_KEYS = ("tp", "fp", "tn", "fn")


def config_int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """An integer config value (records type their values as a wide union)."""
    value = config[key] if default is None else config.get(key, default)
    return int(cast(Any, value))


def config_float(config: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = config[key] if default is None else config.get(key, default)
    return float(cast(Any, value))


def stats_to_metrics(stats: FeatureStats) -> MetricRecord:
    return MetricRecord(
        {
            "num-examples": int(stats.count),
            "stats.sum": stats.sum.tolist(),
            "stats.sumsq": stats.sumsq.tolist(),
            "stats.min": stats.min.tolist(),
            "stats.max": stats.max.tolist(),
        }
    )


def stats_from_metrics(m: Mapping[str, Any]) -> FeatureStats:
    return FeatureStats(
        count=int(m["num-examples"]),
        sum=np.asarray(m["stats.sum"], dtype=np.float64),
        sumsq=np.asarray(m["stats.sumsq"], dtype=np.float64),
        min=np.asarray(m["stats.min"], dtype=np.float64),
        max=np.asarray(m["stats.max"], dtype=np.float64),
    )


def residual_to_metrics(rs: ResidualScale) -> MetricRecord:
    return MetricRecord({"num-examples": int(rs.count), "residual.sumsq": [float(v) for v in rs.sumsq]})


def residual_from_metrics(m: Mapping[str, Any]) -> ResidualScale:
    return ResidualScale(count=int(cast(Any, m["num-examples"])), sumsq=np.asarray(m["residual.sumsq"], np.float64))


def residual_to_config(rs: ResidualScale, config: ConfigRecord) -> None:
    config["residual-json"] = json.dumps(rs.to_dict())


def residual_from_config(config: Mapping[str, Any]) -> ResidualScale | None:
    """The merged residual scale, or None before the federation has one (plain MSE)."""
    text = config.get("residual-json")
    return None if text is None else ResidualScale.from_dict(json.loads(str(text)))


def scaler_to_config(scaler: AnyScaler, config: ConfigRecord) -> None:
    config["scaler-json"] = json.dumps(scaler.to_dict())


def scaler_from_config(config: Mapping[str, Any]) -> AnyScaler | None:
    """The federation's merged scaler (global normalisation), or None: each device fits its own."""
    text = config.get("scaler-json")
    return None if text is None else scaler_from_dict(json.loads(str(text)))


def histograms_to_metrics(h: ClassHistograms, record: MetricRecord) -> None:
    for traffic_type, hist in h.counts.items():
        record[HIST_PREFIX + traffic_type] = [int(v) for v in hist]


def histograms_from_metrics(m: Mapping[str, Any]) -> ClassHistograms:
    return ClassHistograms(
        {k[len(HIST_PREFIX) :]: np.asarray(v, dtype=np.int64) for k, v in m.items() if k.startswith(HIST_PREFIX)}
    )


def confusion_to_metrics(c: Confusion, record: MetricRecord) -> None:
    for key in CONFUSION_KEYS:
        record[key] = int(getattr(c, key))


def confusion_from_metrics(m: Mapping[str, Any]) -> Confusion:
    return Confusion(**{key: int(m[key]) for key in CONFUSION_KEYS})
