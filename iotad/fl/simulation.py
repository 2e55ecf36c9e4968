"""``iotad simulate``: the federation in Flower's simulation engine (Ray backend).

Virtual devices run the same ClientApp as real ones; device k reads
``DATA/device-k``. The ServerApp checkpoints into ``OUT/checkpoints``; the run
folder then gets the same files as a centralised run (``metrics.json``,
``history.json``, ``model/``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotad.core.normalisation import LOCAL
from iotad.core.runs import data_kind, device_dirs, write_run
from iotad.core.shapes import DEFAULT_MEMBERS
from iotad.features.sets import DEFAULT_FEATURE_SET
from iotad.fl.checkpoint import CheckpointStore

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp


def simulate(
    data: Path,
    rounds: int,
    out: Path,
    *,
    devices: int | None = None,
    strategy: str = "fedavg",
    fraction: float = 1.0,
    local_epochs: int = 12,
    quantile: float = 0.99,
    seed: int = 0,
    members: int = DEFAULT_MEMBERS,
    split_seed: int | None = None,
    feature_set: str = DEFAULT_FEATURE_SET,
    normalisation: str = LOCAL,
    extra_config: dict[str, Any] | None = None,
    client_app: ClientApp | None = None,
) -> dict[str, Any]:
    """Run ``rounds`` federated rounds over the device folders in ``data``; returns the final metrics.

    ``seed`` fixes the initial weights and the devices' shuffling, ``split_seed`` (default: ``seed``) each
    device's train / calibration / evaluation split, as in :func:`iotad.core.centralized.run_centralized`.
    Each virtual device writes its own complete bundle to ``OUT/devices/device-<k>/model``; ``OUT/model`` is
    the global bundle (under per-device normalisation: the shared weights and threshold only).
    ``client_app`` replaces iotad's own (benchmarks and tests of hostile devices wrap it).
    """
    found = device_dirs(data)
    n = devices or len(found)
    if n < 1 or n > len(found):
        raise ValueError(f"{data} holds {len(found)} device folders; cannot simulate {n} devices")
    out = Path(out)
    sampled = max(1, round(n * fraction))
    overrides: dict[str, Any] = {
        "num-server-rounds": rounds,
        "strategy": strategy,
        "fraction-train": fraction,
        "fraction-evaluate": 1.0,  # global metrics come from every device
        "min-nodes": min(sampled, n),
        "local-epochs": local_epochs,
        "quantile": quantile,
        "split-seed": seed if split_seed is None else split_seed,
        "model-seed": seed,
        "members": members,
        "feature-set": feature_set,
        "normalisation": normalisation,
        "device-model-root": str((out / "devices").resolve()),
        "data-dir": str(Path(data).resolve()),
        "checkpoint-dir": str((out / "checkpoints").resolve()),
        "resume": False,
        **(extra_config or {}),
    }
    os.environ.setdefault("IOTAD_CACHE_DIR", str((out / "cache").resolve()))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    from flwr.simulation import run_simulation

    from iotad.fl.client_app import app as iotad_client_app
    from iotad.fl.server_app import make_server_app

    t0 = time.monotonic()
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=client_app or iotad_client_app,
        num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 2},
        },
    )
    seconds = time.monotonic() - t0
    store = CheckpointStore(out / "checkpoints")
    latest = store.latest()
    if latest is None or latest.round < rounds:
        raise RuntimeError(f"the simulation did not complete {rounds} rounds (see the log above)")
    history = store.history()
    logging.getLogger(__name__).info("simulation finished in %.1f s", seconds)
    return write_run(
        out,
        kind="federated",
        data_kind=data_kind(data),
        metrics=history[-1].metrics,
        history=[asdict(r) for r in history],
        histograms=store.histograms(),
        bundle_dir=store.bundle_dir(latest.round),
        extra={"strategy": strategy, "devices": n, "rounds": rounds, "fraction": fraction, "members": members,
               "seed": seed, "split_seed": overrides["split-seed"], "feature_set": feature_set,
               "normalisation": normalisation, "seconds": seconds},
    )
