"""What the aggregator launcher reports in ``aggregator-status.json``, and the checkpointed round it resumes from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RETRAIN_REQUEST = "retrain.request"  # in the aggregator's state dir: `iotad retrain` asks for a new training


def latest_round(checkpoint_dir: Path) -> int:
    """Round of the last complete checkpoint (0: none). Reads ``latest.json`` only (no torch)."""
    try:
        return int(json.loads((checkpoint_dir / "latest.json").read_text())["round"])
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
        return 0


@dataclass
class Attempt:
    """One submission of the run (written to ``aggregator-status.json``)."""

    attempt: int
    resume_from_round: int
    reason: str | None
    submitted_at: float
    run_id: int | None = None
    status: str | None = None
    details: str = ""
    seconds: float | None = None


@dataclass
class AggregatorStatus:
    state: str = "starting"  # starting | waiting | training | completed | failed | stopped
    rounds: int = 0
    completed_rounds: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    superlink_restarts: int = 0
    metrics_url: str = ""
    model_holders: int = 0  # online devices that hold the trained model (trained with it, or delivered)
