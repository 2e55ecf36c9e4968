"""The story capture: the same synthetic device in a new capture, normal traffic with a few dense bursts."""

from __future__ import annotations

import numpy as np

from iotad.data.schema import NORMAL, RAW_COLUMNS, TYPE_COLUMN
from iotad.data.synthetic import generate_device_traffic
from iotad.data.synthetic.story import MIN_BURST_ROWS, STORY_LENGTH, story_traffic


def test_story_is_new_rows_of_the_same_device_with_three_bursts() -> None:
    train = generate_device_traffic(1, 6000, seed=7)
    story = story_traffic(1, 6000, seed=7)
    assert list(story.columns) == list(RAW_COLUMNS)
    types = story[TYPE_COLUMN]
    attacks = types[types != NORMAL].value_counts()
    assert len(attacks) == 3 and (attacks >= MIN_BURST_ROWS).all(), attacks
    # Same device: its attack families are the device's own (the seed fixes the mix) ...
    assert set(attacks.index) <= set(train[TYPE_COLUMN])
    # ... and about STORY_LENGTH times its normal rows, none of them a training row.
    normal = story[types == NORMAL]
    n_train_normal = int((train[TYPE_COLUMN] == NORMAL).sum())
    assert abs(len(normal) / n_train_normal - STORY_LENGTH) < 0.1
    as_rows = {tuple(r) for r in train.astype(str).values.tolist()}
    assert not any(tuple(r) in as_rows for r in story.astype(str).values.tolist())
    # Bursts: each family's rows are a dense run, not spread over the capture.
    for attack in attacks.index:
        where = np.flatnonzero(types.to_numpy() == attack)
        assert len(where) / (where[-1] - where[0] + 1) > 0.3, attack


def test_story_is_deterministic() -> None:
    a, b = story_traffic(0, 3000, seed=3), story_traffic(0, 3000, seed=3)
    assert a.equals(b)
