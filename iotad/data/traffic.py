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

from iotad.data.schema import N_FEATURES, REJECT_REASONS


def _no_rejects() -> dict[str, int]:
    return dict.fromkeys(REJECT_REASONS, 0)


@dataclass
@dataclass
class Traffic:
    """Encoded (not scaled) traffic rows.

    ``rejected`` and ``rows_read`` describe the read that produced the rows: ``take``
    keeps them unchanged.
    """

    features: npt.NDArray[np.float32]  # (n, N_FEATURES)
    labels: npt.NDArray[np.int8]  # (n,) 0 normal, 1 attack, -1 unlabelled
    attack_types: npt.NDArray[np.object_]  # (n,) TRAFFIC_TYPES spelling, "" when unlabelled
    row_index: npt.NDArray[np.int64]  # (n,) 0-based data-row number across the input files
    rejected: dict[str, int] = field(default_factory=_no_rejects)
    rows_read: int = 0

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
        """Rows of all parts in order; reject counts and rows read are summed."""
        if not parts:
            return Traffic.empty()
        rejected = _no_rejects()
        for part in parts:
            for reason, count in part.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        return Traffic(
            features=np.concatenate([p.features for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            attack_types=np.concatenate([p.attack_types for p in parts]),
            row_index=np.concatenate([p.row_index for p in parts]),
            rejected=rejected,
            rows_read=sum(p.rows_read for p in parts),
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
