"""Flower ServerApp: reads the run config and runs :class:`FederatedTraining`.

The ServerApp process lives as long as the run and aggregates numpy arrays: it does not import torch
(~180 MiB of memory), directly or indirectly (a test checks it in a fresh interpreter). The one torch step,
the seeded initialisation of the model, runs in a short-lived child interpreter (:func:`initial_weights`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

import iotad
from iotad.fl.checkpoint import CheckpointStore, RoundRecord
from iotad.fl.strategy import FederatedTraining, FederationConfig
from iotad.telemetry.federation import AggregatorTelemetry

log = logging.getLogger(__name__)


# argv: n_features seed members out.npz. Published results depend on these bits (the centralised baseline
# seeds its model the same way, iotad.core.centralized).
_INIT_WEIGHTS = """
import sys

import numpy as np

from iotad.core.train import seeded_weights

n_features, seed, members, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
weights = seeded_weights(n_features, seed, members)
np.savez(out, **{f"w{i:03d}": w for i, w in enumerate(weights)})
"""
INIT_TIMEOUT = 600.0  # s; importing torch took 12.6 s on emulated arm64


def initial_weights(seed: int, members: int, n_features: int) -> list[np.ndarray]:
    """The initial global model: :func:`iotad.core.train.seeded_weights` (float32 ``state_dict`` arrays of a new
    ``Autoencoder(n_features, members=members)`` after ``torch.manual_seed(seed)``).

    Computed by a child interpreter that exits right after, so torch's memory is returned instead of being held
    by this process for the whole run; the arrays travel in an .npz (exact bits).
    """
    # The child imports the iotad this process runs (a FAB's copy when Flower loaded the app from one).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(iotad.__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
    )
    with tempfile.TemporaryDirectory(prefix="iotad-init-") as tmp:
        out = Path(tmp) / "weights.npz"
        argv = [str(int(n_features)), str(int(seed)), str(int(members)), str(out)]
        proc = subprocess.run([sys.executable, "-c", _INIT_WEIGHTS, *argv],
                              env=env, capture_output=True, text=True, timeout=INIT_TIMEOUT)
        if proc.returncode:
            raise RuntimeError(f"computing the initial weights failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        with np.load(out, allow_pickle=False) as npz:
            return [npz[f"w{i:03d}"] for i in range(len(npz.files))]


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
            failed = record.failures()
            telemetry.round_finished(
                seconds=record.duration_seconds, participating=record.devices_participating, failed=failed,
                train_loss=record.train_loss, model_bytes=record.model_bytes,
            )
            telemetry.evaluated(record.metrics)

        training = FederatedTraining(
            grid, cfg, store, on_round=publish, on_phase=telemetry.phase_entered,
            initial_weights=lambda: initial_weights(cfg.model_seed, cfg.members, len(cfg.feature_names)),
        )
        if cfg.distribute:
            delivered = training.distribute()
            telemetry.delivered(delivered["devices_evaluated"])
            log.info("round %d model delivered to %d devices", delivered["round"], delivered["devices_evaluated"])
            return
        history = training.run()
        if history:
            last = history[-1]
            log.info("round %d: f1=%.4f threshold=%.6g", last.round, last.metrics.get("f1") or 0.0, last.threshold)

    return server_app


app = make_server_app()
