"""Per-round checkpoints of the global detector, and the round history.

Layout of a checkpoint folder::

    round-0003/     the global bundle after round 3 (weights, scaler, threshold, round)
    latest.json     {"round": 3}: written last, so it only ever names a complete bundle
    history.json    one RoundRecord per completed round (what the aggregator exports)
    eval_histograms.json  merged per-class score histograms of the latest round

A run lost with its SuperLink resumes from ``latest``: same weights, scaler and
threshold, the remaining rounds. A checkpoint that cannot be read (a damaged disk, a file
edited by hand) is logged and skipped for the newest earlier round that can: the run repeats
the rounds after it rather than stop or start over.

This module must not import torch, directly or indirectly (a test checks it in a fresh interpreter): the
aggregator's launcher and its ServerApp process import it, and torch would cost each ~180 MiB of memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core.bundle import BundleError, bundle_from_weights, save_bundle
from iotad.core.bundle_read import read_bundle
from iotad.core.evaluation import ClassHistograms
from iotad.core.normalisation import AnyScaler
from iotad.core.preprocessing import ResidualScale
from iotad.core.shapes import DEFAULT_DROPOUT, DEFAULT_HIDDEN

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be read."""


@dataclass
class RoundRecord:
    """What one completed round produced (aggregates only)."""

    round: int
    train_loss: float | None
    devices_participating: int
    devices_failed: int
    rejected_updates: dict[str, int]
    threshold: float
    metrics: dict[str, Any]
    duration_seconds: float
    model_bytes: int
    finished_at: float = field(default_factory=time.time)

    def failures(self) -> dict[str, int]:
        """Devices lost in the round, by reason: the screen's (``error``: a device gone or crashed; or the
        poisoning it caught), ``missing`` for the rest (no reply before the round's timeout)."""
        failed = {reason: n for reason, n in self.rejected_updates.items() if n}
        missing = self.devices_failed - sum(failed.values())
        return {**failed, "missing": missing} if missing > 0 else failed


@dataclass
class Checkpoint:
    """The global state after a round. ``scaler`` and ``residual`` are None under per-device normalisation
    (each device's bundle carries its own)."""

    round: int
    weights: list[np.ndarray]
    scaler: AnyScaler | None
    threshold: float
    quantile: float
    residual: ResidualScale | None = None
    feature_names: tuple[str, ...] = ()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def bundle_dir(self, server_round: int) -> Path:
        return self.root / f"round-{server_round:04d}"

    def save(self, ckpt: Checkpoint, history: list[RoundRecord], histograms: ClassHistograms) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        bundle = save_bundle(self.bundle_dir(ckpt.round), bundle_from_weights(
            ckpt.weights, ckpt.scaler, ckpt.threshold, hidden=DEFAULT_HIDDEN, dropout=DEFAULT_DROPOUT,
            quantile=ckpt.quantile, round=ckpt.round, feature_names=ckpt.feature_names or None,
            metadata={"source": "federated", "normalisation": "global" if ckpt.scaler is not None else "local"},
            residual_scale=ckpt.residual,
        ))
        write_json_atomic(self.root / "eval_histograms.json", histograms.to_dict())
        write_json_atomic(self.root / "history.json", [asdict(r) for r in history])
        write_json_atomic(self.root / "latest.json", {"round": ckpt.round})
        return bundle

    def latest(self) -> Checkpoint | None:
        """The newest readable checkpoint, at or before the round ``latest.json`` names; None: no run yet.

        Raises
        ------
        CheckpointError
            There are checkpoints, and not one of them can be read.
        """
        rounds = sorted((int(p.name[6:]) for p in self.root.glob("round-[0-9][0-9][0-9][0-9]")), reverse=True)
        try:
            newest: int | None = int(json.loads((self.root / "latest.json").read_text())["round"])
        except FileNotFoundError:
            newest = None
        except (ValueError, KeyError, TypeError) as e:
            log.error("%s: unreadable (%s); looking for the newest good checkpoint", self.root / "latest.json", e)
            newest = rounds[0] if rounds else None
        if newest is None:
            return None
        broken: list[str] = []
        for server_round in (newest, *(r for r in rounds if r < newest)):
            try:
                return self._read(server_round)
            except (BundleError, ValueError) as e:
                broken.append(f"round {server_round}: {e}")
                log.error("checkpoint of round %d unreadable, trying the one before: %s", server_round, e)
        raise CheckpointError(f"{self.root}: no readable checkpoint ({'; '.join(broken) or 'none written'}); "
                              "remove the folder to start over, or set resume = false")

    def _read(self, server_round: int) -> Checkpoint:
        b = read_bundle(self.bundle_dir(server_round))  # checks the weights against their sha256 and shapes
        if b.threshold is None or b.round != server_round:
            raise BundleError(f"{self.bundle_dir(server_round)}: not a checkpoint of round {server_round}")
        return Checkpoint(server_round, list(b.arrays), b.scaler, b.threshold, b.quantile, b.residual_scale,
                          tuple(b.feature_names or ()))

    def histograms(self) -> ClassHistograms:
        return ClassHistograms.from_dict(json.loads((self.root / "eval_histograms.json").read_text()))

    def history(self, up_to: int | None = None) -> list[RoundRecord]:
        """Completed rounds (``up_to``: those a resume from that round keeps; a kill between the history
        and ``latest.json`` writes, or a fallback to an older checkpoint, leaves later ones)."""
        try:
            rows = json.loads((self.root / "history.json").read_text())
        except FileNotFoundError:
            return []
        return [RoundRecord(**row) for row in rows if up_to is None or row["round"] <= up_to]
