"""Flower ClientApp: thin handlers around :mod:`iotad.core.local_steps`.

Each handler loads the device's cached splits, applies the global state it was
sent, calls one pure local step and wraps the aggregates in a reply. Under the
deployment engine every message runs in a fresh process, so module-level work is
kept to imports.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from iotad.core import local_steps
from iotad.core.normalisation import AnyScaler
from iotad.core.preprocessing import ResidualScale
from iotad.core.train import TrainConfig
from iotad.data.device import load_device_splits
from iotad.data.splits import Splits
from iotad.features.sets import DEFAULT_FEATURE_SET, feature_names, stage_for
from iotad.fl.records import (
    config_float,
    config_int,
    confusion_to_metrics,
    histograms_to_metrics,
    residual_from_config,
    residual_to_metrics,
    scaler_from_config,
    stats_to_metrics,
)
from iotad.telemetry.device import DeviceTelemetry

app = ClientApp()


def device_name(context: Context) -> str:
    """The node's ``device-name``, else ``$IOTAD_DEVICE`` (what the agent uses), else device-<partition-id>."""
    name = context.node_config.get("device-name") or os.environ.get("IOTAD_DEVICE")
    return str(name or f"device-{context.node_config.get('partition-id', 0)}")


def training_seed(config: ConfigRecord, context: Context) -> int:
    """Seed of a device's local shuffling: fixed by the run's model seed, the round and the device's name.

    Not the node id, which Flower draws at random: the same run on the same devices trains the same model.
    """
    device = zlib.crc32(device_name(context).encode()) % 1000
    return config_int(config, "model-seed", 0) * 1_000_000 + config_int(config, "server-round", 0) * 1000 + device


def _telemetry(context: Context) -> DeviceTelemetry:
    telemetry = DeviceTelemetry(device_name(context))
    telemetry.clientapp_started()
    return telemetry


def device_data(context: Context, config: ConfigRecord) -> Path:
    """Deployment: the node's own ``data-path``; simulation: ``data-dir``/device-<partition-id>."""
    if "data-path" in context.node_config:
        return Path(str(context.node_config["data-path"]))
    return Path(str(config["data-dir"])) / f"device-{context.node_config['partition-id']}"


def _splits(msg: Message, context: Context) -> Splits:
    config = msg.content.config_records["config"]
    cache = context.node_config.get("cache-dir") or os.environ.get("IOTAD_CACHE_DIR")
    return load_device_splits(
        device_data(context, config),
        seed=config_int(config, "split-seed", 0),
        cache_dir=Path(str(cache)) if cache else Path.home() / ".cache" / "iotad",
        extra=stage_for(_feature_set(config)),
    )


def _feature_set(config: ConfigRecord) -> str:
    return str(config.get("feature-set", DEFAULT_FEATURE_SET))


def _normaliser(
    config: ConfigRecord, splits: Splits, weights: list | None = None
) -> tuple[AnyScaler, ResidualScale | None]:
    """Scaler and residual scale: the federation's merged ones (global normalisation) or, when the server
    sends none, the device's own, fitted on its normal training rows (the residual scale under ``weights``)."""
    scaler = scaler_from_config(config)
    if scaler is not None:
        return scaler, residual_from_config(config)
    residual = None if weights is None else local_steps.local_residual(splits, weights)
    return local_steps.local_scaler(splits), residual


def _model_dir(context: Context, config: ConfigRecord) -> Path | None:
    """Where the device keeps its bundle: the node's ``model-dir`` or ``$IOTAD_MODEL_DIR``; in a simulation
    ``device-model-root``/<device>/model."""
    model_dir = context.node_config.get("model-dir") or os.environ.get("IOTAD_MODEL_DIR")
    if model_dir:
        return Path(str(model_dir))
    root = config.get("device-model-root")
    return Path(str(root)) / device_name(context) / "model" if root else None


def _reply(msg: Message, metrics: MetricRecord, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": metrics})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.query("feature_stats")
def feature_stats(msg: Message, context: Context) -> Message:
    """Phase 0: scaling statistics of local normal training rows."""
    return _reply(msg, stats_to_metrics(local_steps.feature_stats(_splits(msg, context))))


@app.train()
def train(msg: Message, context: Context) -> Message:
    telemetry = _telemetry(context)
    config = msg.content.config_records["config"]
    splits = _splits(msg, context)
    defaults = TrainConfig()
    server_round = config_int(config, "server-round", 1)
    rounds = max(config_int(config, "num-server-rounds", 1), 1)
    cfg = TrainConfig(
        epochs=config_int(config, "local-epochs", defaults.epochs),
        batch_size=config_int(config, "batch-size", defaults.batch_size),
        lr=config_float(config, "learning-rate", defaults.lr),
        proximal_mu=config_float(config, "proximal-mu", 0.0),
        seed=training_seed(config, context),
        # Round r of R trains part r-1 of one run-wide learning-rate schedule (see TrainConfig).
        schedule_part=min(max(server_round - 1, 0), rounds - 1),
        schedule_parts=rounds,
    )
    weights, result = local_steps.train(
        splits, msg.content.array_records["arrays"].to_numpy_ndarrays(), _normaliser(config, splits)[0], cfg
    )
    metrics = MetricRecord(
        {
            "num-examples": int(result.samples // max(cfg.epochs, 1)),
            "train-loss": float(result.final_loss),
        }
    )
    telemetry.trained(
        loss=result.final_loss, samples=result.samples, epochs=len(result.epoch_losses), seconds=result.seconds
    )
    return _reply(msg, metrics, ArrayRecord.from_numpy_ndarrays(weights))


@app.query("residual_stats")
def residual_stats(msg: Message, context: Context) -> Message:
    """Per-feature squared residuals of the global model on local normal training rows."""
    config = msg.content.config_records["config"]
    weights = msg.content.array_records["arrays"].to_numpy_ndarrays()
    splits = _splits(msg, context)
    return _reply(msg, residual_to_metrics(
        local_steps.residual_stats(splits, weights, _normaliser(config, splits)[0])
    ))


@app.query("calibrate")
def calibrate(msg: Message, context: Context) -> Message:
    """Histogram of the global model's scores on held-out normal rows."""
    config = msg.content.config_records["config"]
    splits = _splits(msg, context)
    weights = msg.content.array_records["arrays"].to_numpy_ndarrays()
    hist = local_steps.calibration_histogram(splits, weights, *_normaliser(config, splits, weights))
    return _reply(msg, MetricRecord({"num-examples": int(hist.sum()), "hist.calibration": [int(v) for v in hist]}))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Confusion counts and per-class score histograms at the global threshold."""
    telemetry = _telemetry(context)
    t0 = time.monotonic()
    config = msg.content.config_records["config"]
    weights = msg.content.array_records["arrays"].to_numpy_ndarrays()
    splits = _splits(msg, context)
    scaler, residual = _normaliser(config, splits, weights)
    threshold = config_float(config, "threshold")
    local = local_steps.evaluate(splits, weights, scaler, threshold, residual)
    metrics = MetricRecord({"num-examples": local.confusion.n_normal + local.confusion.n_attack})
    confusion_to_metrics(local.confusion, metrics)
    histograms_to_metrics(local.histograms, metrics)
    model_dir = _model_dir(context, config)
    if model_dir is not None:
        # Hand the device's complete bundle (global weights and threshold, its own or the merged
        # normalisation) to its agent, which hot-reloads it.
        local_steps.save_global_bundle(
            model_dir, weights, scaler, threshold, config_int(config, "server-round", 0),
            quantile=config_float(config, "quantile", 0.99), residual=residual,
            feature_names=feature_names(_feature_set(config)),
        )
    telemetry.evaluated(seconds=time.monotonic() - t0)
    return _reply(msg, metrics)
