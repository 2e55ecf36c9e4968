"""A story capture of one synthetic device: normal traffic with a few attack bursts at known times.

The generator draws a device's traffic mix (sensor profiles, shares, network) from the seed and scales
it to the row count, so the training data's seed with another row count is the same device in a new
capture: none of its rows were trained on. It keeps the normal rows and the attack families that come
in the densest bursts (the share of the rows within their own span; at least ``MIN_BURST_ROWS`` rows).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from iotad.data.schema import NORMAL, TYPE_COLUMN
from iotad.data.synthetic import generate_device_traffic

STORY_LENGTH = 1.5  # a story capture has this many times the rows of the training capture
MIN_BURST_ROWS = 100
EPISODES = 3


def story_traffic(device: int, training_rows: int, seed: int, episodes: int = EPISODES) -> pd.DataFrame:
    """The story capture of ``device`` whose training capture had ``training_rows`` rows under ``seed``."""
    frame = generate_device_traffic(device, round(STORY_LENGTH * training_rows), seed)
    types = frame[TYPE_COLUMN].to_numpy()
    density = {}
    for attack in set(types) - {NORMAL}:
        where = np.flatnonzero(types == attack)
        if len(where) >= MIN_BURST_ROWS:
            density[str(attack)] = len(where) / (where[-1] - where[0] + 1)
    keep = sorted(density, key=lambda a: (-density[a], a))[:episodes]
    return frame[(types == NORMAL) | np.isin(types, keep)].reset_index(drop=True)


def write_story_captures(out: Path, devices: int, rows_per_device: int, seed: int) -> list[Path]:
    """``out/device-<k>/story.csv`` for ``k < devices``, next to the ``traffic.csv`` of ``iotad synth``."""
    paths = []
    for k in range(devices):
        paths.append(write_capture(story_traffic(k, rows_per_device, seed), Path(out) / f"device-{k}" / "story.csv"))
    return paths


def write_capture(frame: pd.DataFrame, path: Path) -> Path:
    """A capture as ``iotad synth`` writes its CSVs (raw schema, header, minimal quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    return path
