"""Encoded traffic rows: what the loader yields and every consumer takes.

Kept free of pandas so that a ClientApp process, which loads cached arrays, does not
pay for importing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from iotad.data.schema import LABEL_NOTES, N_FEATURES, REJECT_REASONS


def _no_rejects() -> dict[str, int]:
    return dict.fromkeys(REJECT_REASONS, 0)


def _no_notes() -> dict[str, int]:
    return dict.fromkeys(LABEL_NOTES, 0)


def _sum(counts: Sequence[Mapping[str, int]], start: dict[str, int]) -> dict[str, int]:
    for c in counts:
        for key, n in c.items():
            start[key] = start.get(key, 0) + n
    return start


@dataclass
class Traffic:
    """Encoded (not scaled) traffic rows.

    ``rejected``, ``label_notes`` (kept rows whose label columns needed a decision, see
    :data:`iotad.data.schema.LABEL_NOTES`) and ``rows_read`` describe the read that produced the
    rows: ``take`` keeps them unchanged.
    """

    features: npt.NDArray[np.float32]  # (n, N_FEATURES)
    labels: npt.NDArray[np.int8]  # (n,) 0 normal, 1 attack, -1 unlabelled
    attack_types: npt.NDArray[np.object_]  # (n,) TRAFFIC_TYPES spelling or another name, "" when unlabelled
    row_index: npt.NDArray[np.int64]  # (n,) 0-based data-row number across the input files
    rejected: dict[str, int] = field(default_factory=_no_rejects)
    rows_read: int = 0
    label_notes: dict[str, int] = field(default_factory=_no_notes)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def empty(n_features: int = N_FEATURES) -> Traffic:
        """No rows."""
        return Traffic(
            features=np.zeros((0, n_features), dtype=np.float32),
            labels=np.zeros(0, dtype=np.int8),
            attack_types=np.zeros(0, dtype=object),
            row_index=np.zeros(0, dtype=np.int64),
        )

    @staticmethod
    def concat(parts: Sequence[Traffic]) -> Traffic:
        """Rows of all parts in order; reject counts, label notes and rows read are summed."""
        if not parts:
            return Traffic.empty()
        return Traffic(
            features=np.concatenate([p.features for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            attack_types=np.concatenate([p.attack_types for p in parts]),
            row_index=np.concatenate([p.row_index for p in parts]),
            rejected=_sum([p.rejected for p in parts], _no_rejects()),
            rows_read=sum(p.rows_read for p in parts),
            label_notes=_sum([p.label_notes for p in parts], _no_notes()),
        )

    def take(self, idx: npt.ArrayLike) -> Traffic:
        """Rows at ``idx`` (integer positions or a boolean mask)."""
        index = np.asarray(idx)
        return Traffic(
            features=self.features[index],
            labels=self.labels[index],
            attack_types=self.attack_types[index],
            row_index=self.row_index[index],
            rejected=dict(self.rejected),
            rows_read=self.rows_read,
            label_notes=dict(self.label_notes),
        )


class ExtraFeatures(Protocol):
    """A stage that appends columns computed over a stream of rows (the window statistics of
    :mod:`iotad.features`), handed in by a caller above this package.

    It sees the kept rows of each block in file order, with their raw :data:`STREAM_COLUMNS`
    and packet features, before deduplication; ``start_stream`` is called at every file.
    """

    names: tuple[str, ...]

    def start_stream(self) -> None: ...

    def __call__(self, keys: Mapping[str, np.ndarray], packet: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


def feature_width(extra: ExtraFeatures | None) -> int:
    """Columns of the rows the loader yields with ``extra``."""
    return N_FEATURES + (len(extra.names) if extra is not None else 0)
