"""Hostile devices for benchmarks and fault tests: iotad's ClientApp, with one device's train replies
poisoned.

Model poisoning rewrites the update the device sends (the global weights ``g`` it received, its honest
local weights ``w``); data poisoning needs no code (the device's folder holds attack rows labelled normal,
see :func:`attack_trained_device`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from iotad.data.schema import LABEL_COLUMN
from iotad.fl.client_app import app as iotad_app

Poison = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]

POISONS: dict[str, Poison] = {
    "nan weights": lambda g, w: [np.full_like(a, np.nan) for a in w],
    "inf weights": lambda g, w: [np.where(np.arange(a.size).reshape(a.shape) % 2 == 0, np.inf, a) for a in w],
    "wrong shapes": lambda g, w: [a.T.copy() if a.ndim == 2 else a for a in w[::-1]],
    "x100 scaled update": lambda g, w: [b + 100.0 * (a - b) for a, b in zip(w, g, strict=True)],
    "sign-flipped update": lambda g, w: [b - (a - b) for a, b in zip(w, g, strict=True)],
}

# The robust strategies, and the run config each needs for one hostile device of five.
STRATEGY_CONFIG: dict[str, dict[str, int | float | str]] = {
    "fedavg": {"strategy": "fedavg"},
    "fedmedian": {"strategy": "fedmedian"},
    "fedtrimmedavg": {"strategy": "fedtrimmedavg", "trim-beta": 0.2},
    "krum": {"strategy": "krum", "krum-malicious": 1},
}


def hostile_app(poison: str, device: str) -> ClientApp:
    """iotad's ClientApp, except that ``device``'s train replies carry ``POISONS[poison]`` of its update."""
    rewrite = POISONS[poison]
    app = ClientApp()

    def is_hostile(context: Context) -> bool:
        return f"device-{context.node_config.get('partition-id')}" == device

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = iotad_app(msg, context)
        if not is_hostile(context) or reply.has_error():
            return reply
        sent = msg.content.array_records["arrays"].to_numpy_ndarrays()
        honest = reply.content.array_records["arrays"].to_numpy_ndarrays()
        content = RecordDict({"arrays": ArrayRecord.from_numpy_ndarrays(rewrite(sent, honest)),
                              "metrics": reply.content.metric_records["metrics"]})
        return Message(content=content, reply_to=msg)

    def passthrough(msg: Message, context: Context) -> Message:
        return iotad_app(msg, context)

    app.evaluate()(passthrough)
    for action in ("feature_stats", "residual_stats", "calibrate"):
        app.query(action)(passthrough)
    return app


def attack_trained_device(clean_csv: Path, out_csv: Path) -> int:
    """A device that trains on attack traffic: its capture with every attack row labelled normal (so they
    reach its training split). Returns the rows relabelled."""
    with open(clean_csv, newline="") as f:
        rows = list(csv.reader(f))
    label = rows[0].index(LABEL_COLUMN)
    relabelled = 0
    for row in rows[1:]:
        if row[label] == "1":
            row[label], relabelled = "0", relabelled + 1
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return relabelled
