"""Deterministic train / calibration / evaluation splits of one device's traffic.

Normal rows are shuffled with a seeded generator and cut into a training part, a
held-out calibration part (its reconstruction errors set the threshold) and an
evaluation part; every attack row goes to evaluation. The same seed gives the same
split on a device and in the centralised baseline, so both see identical rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iotad.data.traffic import Traffic

TRAIN_FRACTION = 0.6
CALIBRATION_FRACTION = 0.15


@dataclass(frozen=True)
class Splits:
    train: Traffic
    calibration: Traffic
    evaluation: Traffic


def split_traffic(
    traffic: Traffic,
    seed: int,
    *,
    train_fraction: float = TRAIN_FRACTION,
    calibration_fraction: float = CALIBRATION_FRACTION,
) -> Splits:
    """Split labelled traffic; attacks never reach training or calibration."""
    if train_fraction <= 0 or calibration_fraction <= 0 or train_fraction + calibration_fraction > 1:
        raise ValueError("fractions must be positive and sum to at most 1")
    normal = np.flatnonzero(traffic.labels == 0)
    attack = np.flatnonzero(traffic.labels != 0)
    order = np.random.default_rng(seed).permutation(normal)
    n_train = round(len(order) * train_fraction)
    n_calibration = round(len(order) * calibration_fraction)
    train = np.sort(order[:n_train])
    calibration = np.sort(order[n_train : n_train + n_calibration])
    evaluation = np.sort(np.concatenate([order[n_train + n_calibration :], attack]))
    return Splits(traffic.take(train), traffic.take(calibration), traffic.take(evaluation))


def split_normal(traffic: Traffic, seed: int, *, calibration_fraction: float = 0.2) -> tuple[Traffic, Traffic]:
    """Split normal-only training traffic into training and calibration parts."""
    normal = np.flatnonzero(traffic.labels == 0)
    order = np.random.default_rng(seed).permutation(normal)
    n_calibration = round(len(order) * calibration_fraction)
    return traffic.take(np.sort(order[n_calibration:])), traffic.take(np.sort(order[:n_calibration]))
