"""Flower ServerApp: reads the run config and runs :class:`FederatedTraining`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from iotad.checkpoint import CheckpointStore, RoundRecord
from iotad.strategy import FederatedTraining, FederationConfig
from iotad.telemetry import AggregatorTelemetry

log = logging.getLogger(__name__)


def initial_weights(seed: int, members: int) -> list:
    import torch

    from iotad.data.schema import N_FEATURES
    from iotad.model import Autoencoder
    from iotad.train import get_weights

    torch.manual_seed(seed)
    return get_weights(Autoencoder(N_FEATURES, members=members))


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is the Flower one updated with ``overrides``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = FederationConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
        store = CheckpointStore(Path(cfg.checkpoint_dir))
        telemetry = AggregatorTelemetry()

        def publish(record: RoundRecord) -> None:
            telemetry.round_started(record.round)
            failed = {"missing": record.devices_failed} if record.devices_failed else {}
            telemetry.round_finished(
                seconds=record.duration_seconds, participating=record.devices_participating, failed=failed,
                train_loss=record.train_loss, model_bytes=record.model_bytes,
            )
            telemetry.evaluated(record.metrics)

        history = FederatedTraining(
            grid, cfg, store, initial_weights=lambda: initial_weights(cfg.model_seed, cfg.members), on_round=publish
        ).run()
        if history:
            last = history[-1]
            log.info("round %d: f1=%.4f threshold=%.6g", last.round, last.metrics.get("f1") or 0.0, last.threshold)

    return server_app


app = make_server_app()
