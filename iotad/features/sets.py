"""Feature sets a detector can be trained on, and the stage that adds the window part.

``packet``: the per-packet encoding alone (:data:`iotad.data.schema.FEATURE_NAMES`).
``window``: the same columns followed by the window statistics of :mod:`iotad.features.window`.
A bundle records its feature names, so whoever scores with it knows which set to compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from iotad.data.schema import FEATURE_NAMES
from iotad.features.names import WINDOW_FEATURE_NAMES

PACKET, WINDOW = "packet", "window"
FEATURE_SETS: tuple[str, ...] = (PACKET, WINDOW)
DEFAULT_FEATURE_SET = WINDOW
_PACKET_INPUTS = ("tcp.flags", "tcp.len", "mqtt.msgtype")
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


def feature_names(feature_set: str = DEFAULT_FEATURE_SET) -> tuple[str, ...]:
    """Column names of a feature set, in order."""
    if feature_set == PACKET:
        return FEATURE_NAMES
    if feature_set == WINDOW:
        return FEATURE_NAMES + WINDOW_FEATURE_NAMES
    raise ValueError(f"unknown feature set {feature_set!r}; choose one of {', '.join(FEATURE_SETS)}")


def feature_set_of(names: Sequence[str]) -> str:
    """The feature set whose columns are ``names`` (e.g. a bundle's)."""
    for feature_set in FEATURE_SETS:
        if tuple(names) == feature_names(feature_set):
            return feature_set
    raise ValueError(f"{len(names)} feature names match no feature set of this version")


class WindowStage:
    """The loader's extra stage for the ``window`` set: one :class:`WindowState`, reset per stream.

    Pass it as ``extra=`` to :func:`iotad.data.loader.load_traffic`, ``iter_traffic`` or
    ``encode_lines``; a long-lived scorer keeps one stage for its whole stream.
    """

    names = WINDOW_FEATURE_NAMES

    def __init__(self, capacity: int | None = None) -> None:
        from iotad.features.stream import DEFAULT_CAPACITY, WindowState  # numba: only where rows are windowed

        self.state = WindowState(capacity or DEFAULT_CAPACITY)

    def start_stream(self) -> None:
        self.state.reset()

    def __call__(self, keys: Mapping[str, np.ndarray], packet: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.state.update(keys, {c: packet[:, _COLUMN[c]] for c in _PACKET_INPUTS})


def stage_for(feature_set: str, capacity: int | None = None) -> WindowStage | None:
    """The extra stage a feature set needs (None for ``packet``)."""
    feature_names(feature_set)  # validates
    return WindowStage(capacity) if feature_set == WINDOW else None
