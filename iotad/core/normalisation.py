"""Per-device normalisation: a quantile scaler fitted on one device's own normal rows.

Issue 3's finding, now the design: a device scales its inputs with its own statistics and
weights its score with its own residual scale; the federation averages only the model
weights and agrees on the threshold over these locally normalised scores (FedBN's idea,
Li et al., ICLR 2021, for an autoencoder without batch norm). Since nothing of the scaler
leaves the device, it may be richer than federatable sums: each feature goes through its
own normal-traffic CDF, so "beyond what this device's normal traffic ever does" is one
scale for every feature, whether it is a flag, a counter or a window rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from iotad.core.preprocessing import CLIP, FeatureStats, Scaler, signed_log1p

if TYPE_CHECKING:
    from iotad.core.quantile_map import QuantileMap

QUANTILES = 256
KIND = "signed-log1p-quantile"
#: Where the scaler and residual scale come from in a federation: each device's own normal rows
#: (``local``, the default) or statistics merged over the fleet (``global``, federatable sums only,
#: so a min-max scaler; kept for comparison).
LOCAL, GLOBAL = "local", "global"
NORMALISATIONS: tuple[str, ...] = (LOCAL, GLOBAL)
#: Scaler kinds: the quantile scaler needs the rows (local), the min-max one only merged sums.
QUANTILE, MINMAX = "quantile", "minmax"
SCALER_KINDS: tuple[str, ...] = (QUANTILE, MINMAX)
SCALER_OF: dict[str, str] = {LOCAL: QUANTILE, GLOBAL: MINMAX}


class QuantileScaler:
    """Signed log1p, then each feature's empirical CDF on normal rows, mapped to [-1, 1].

    A value maps to its mid-rank among the quantiles (a step function: measured better than
    interpolating between them, F1 0.90 vs 0.83 on the synthetic generator split, seed 0). Ties (a
    feature that is mostly 0) take the middle of their run, so a value shared by half the rows maps
    near 0, not to either end. Outside the fitted range the map continues linearly, one unit per
    fitted range, clipped at ``clip``: far beyond normal stays far.

    Parameters
    ----------
    quantiles : np.ndarray
        (n_quantiles, n_features) quantiles of ``signed_log1p(features)``, each column non-decreasing.
    """

    def __init__(self, quantiles: np.ndarray, clip: float = CLIP) -> None:
        q = np.asarray(quantiles, dtype=np.float64)
        if q.ndim != 2 or q.shape[0] < 2 or not np.isfinite(q).all() or (np.diff(q, axis=0) < 0).any():
            raise ValueError("quantiles must be a finite (n_quantiles >= 2, n_features) array, sorted per column")
        self.quantiles = q
        self.clip = float(clip)
        self._low = q[0]
        # Per column the distinct quantile values and the mid-rank of a value equal to each (``tie``) or
        # just below it (``gap``): one search over the distinct values, which for the many tied columns
        # (flags, mostly-empty fields) are a handful.
        steps = q.shape[0] - 1
        self._grids = []
        for col in q.T:
            values, first, counts = np.unique(col, return_index=True, return_counts=True)
            gap = 2.0 * first / steps - 1.0
            tie = (2.0 * first + counts) / steps - 1.0
            self._grids.append((values, np.append(gap, 1.0), np.append(tie, 1.0)))
        self._span = np.maximum(q[-1] - q[0], 1e-6) / 2.0  # half the range maps onto one unit of [-1, 1]
        self._map: QuantileMap | None = None  # compiled on first use

    @property
    def n_features(self) -> int:
        return int(self.quantiles.shape[1])

    @classmethod
    def fit(cls, x: np.ndarray, n_quantiles: int = QUANTILES, clip: float = CLIP) -> QuantileScaler:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"need a non-empty (rows, features) array, got shape {x.shape}")
        big = float(np.finfo(np.float32).max)
        logged = signed_log1p(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=big, neginf=-big))
        return cls(np.quantile(logged, np.linspace(0.0, 1.0, n_quantiles), axis=0), clip=clip)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale raw features (n, n_features) to float32 in [-clip, clip]."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"scaler expects (rows, {self.n_features}) features, got shape {x.shape}")
        if self._map is None:
            from iotad.core.quantile_map import QuantileMap  # numba: loaded by the processes that scale

            self._map = QuantileMap(self._grids, self._low, self.quantiles[-1], self._span, self.clip)
        return self._map(x)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "quantiles": self.quantiles.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileScaler:
        if d.get("kind") != KIND:
            raise ValueError(f"not a quantile scaler: kind {d.get('kind')!r}")
        return cls(np.array(d["quantiles"], dtype=np.float64), float(d["clip"]))


AnyScaler = Scaler | QuantileScaler


def scaler_from_dict(d: dict[str, Any]) -> AnyScaler:
    """The scaler a bundle or message describes, by its ``kind``."""
    return QuantileScaler.from_dict(d) if d.get("kind") == KIND else Scaler.from_dict(d)


def fit_scaler(x: np.ndarray, kind: str = QUANTILE) -> AnyScaler:
    """A scaler of ``kind`` fitted on normal rows ``x``."""
    if kind == QUANTILE:
        return QuantileScaler.fit(x)
    if kind == MINMAX:
        return Scaler.from_stats(FeatureStats.of(x))
    raise ValueError(f"unknown scaler {kind!r}; choose one of {', '.join(SCALER_KINDS)}")


def check_normalisation(name: str) -> str:
    if name not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {', '.join(NORMALISATIONS)}")
    return name
