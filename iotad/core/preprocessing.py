"""Feature scaling from federatable statistics.

Raw features mix heavy-tailed counters and ids (up to ~4e9), small integers, 0/1 flags and one-hot columns.
Every feature goes through a signed ``log1p`` first (compresses the tails, keeps 0/1 as 0/0.693), then a
min-max map to [-1, 1] computed from statistics that devices can share without sharing rows: count, sum,
sum of squares, min and max per feature. Merging the statistics of parts gives the statistics of the union,
so a federated scaler equals the centralised one.

:class:`ResidualScale` does the same for the anomaly score: per-feature sums of squared reconstruction
residuals on normal rows (and a count), merged by summation, give the per-feature weights of the score.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Scaled values are clipped to [-CLIP, CLIP]: a value far outside the training range still scores as
#: anomalous (the Tanh decoder cannot reach it), but one absurd value cannot dominate the error of a row.
CLIP = 3.0


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """Return ``sign(x) * log1p(|x|)`` in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def _check_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d feature array (rows, features), got shape {x.shape}")
    return x


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    # JSON has no inf/NaN; an empty part has min=+inf / max=-inf, written as null.
    return [float(v) if np.isfinite(v) else None for v in values]


@dataclass
class FeatureStats:
    """Per-feature count, sum, sum of squares, min and max of ``signed_log1p(features)``.

    Parameters
    ----------
    count : int
        Rows summarised.
    sum, sumsq, min, max : np.ndarray
        float64 arrays of shape (n_features,). An empty summary has min=+inf and max=-inf.
    """

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.sum.shape[0])

    @classmethod
    def empty(cls, n_features: int) -> FeatureStats:
        """Statistics of zero rows (the identity of :meth:`merge`)."""
        return cls(
            count=0,
            sum=np.zeros(n_features),
            sumsq=np.zeros(n_features),
            min=np.full(n_features, np.inf),
            max=np.full(n_features, -np.inf),
        )

    @classmethod
    def of(cls, x: np.ndarray) -> FeatureStats:
        """Summarise raw (unscaled) features ``x`` of shape (n, n_features)."""
        x = _check_2d(x)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        t = signed_log1p(x)
        if not np.isfinite(t).all():
            raise ValueError("features contain NaN or inf")
        return cls(
            count=int(t.shape[0]),
            sum=t.sum(axis=0),
            sumsq=np.square(t).sum(axis=0),
            min=t.min(axis=0),
            max=t.max(axis=0),
        )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both summarised row sets."""
        if other.n_features != self.n_features:
            raise ValueError(f"cannot merge stats of {self.n_features} and {other.n_features} features")
        return FeatureStats(
            count=self.count + other.count,
            sum=self.sum + other.sum,
            sumsq=self.sumsq + other.sumsq,
            min=np.minimum(self.min, other.min),
            max=np.maximum(self.max, other.max),
        )

    @staticmethod
    def merge_all(parts: list[FeatureStats]) -> FeatureStats:
        """Merge any number of parts (at least one)."""
        if not parts:
            raise ValueError("no statistics to merge")
        return functools.reduce(FeatureStats.merge, parts)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        var = self.sumsq / max(self.count, 1) - np.square(self.mean)
        return np.sqrt(np.maximum(var, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists of floats; null for the min/max of an empty summary)."""
        return {
            "count": int(self.count),
            "sum": [float(v) for v in self.sum],
            "sumsq": [float(v) for v in self.sumsq],
            "min": _finite_or_none(self.min),
            "max": _finite_or_none(self.max),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureStats:
        def arr(key: str, missing: float) -> np.ndarray:
            return np.array([missing if v is None else float(v) for v in d[key]], dtype=np.float64)

        out = cls(
            count=int(d["count"]),
            sum=arr("sum", 0.0),
            sumsq=arr("sumsq", 0.0),
            min=arr("min", np.inf),
            max=arr("max", -np.inf),
        )
        if not (out.sum.shape == out.sumsq.shape == out.min.shape == out.max.shape):
            raise ValueError("feature stats arrays differ in length")
        return out


class Scaler:
    """Signed log1p, then min-max to [-1, 1], clipped to [-clip, clip].

    A constant (or never seen) column maps its training value to 0 and uses a unit half-range, so a
    different value at inference still shows up (one unit per factor e of change) instead of dividing by 0.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, clip: float = CLIP) -> None:
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError("low and high must be 1-d arrays of the same length")
        if clip < 1.0:
            raise ValueError("clip must be >= 1 (the training range maps to [-1, 1])")
        seen = np.isfinite(low) & np.isfinite(high)
        self.low = np.where(seen, low, 0.0)
        self.high = np.where(seen, high, 0.0)
        self.clip = float(clip)
        half = (self.high - self.low) / 2.0
        self._center = ((self.high + self.low) / 2.0).astype(np.float32)
        self._inv_half = np.where(half > 0, 1.0 / np.where(half > 0, half, 1.0), 1.0).astype(np.float32)

    @property
    def n_features(self) -> int:
        return int(self.low.shape[0])

    @classmethod
    def from_stats(cls, stats: FeatureStats, clip: float = CLIP) -> Scaler:
        return cls(stats.min, stats.max, clip=clip)

    @classmethod
    def fit(cls, x: np.ndarray, clip: float = CLIP) -> Scaler:
        return cls.from_stats(FeatureStats.of(x), clip=clip)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale raw features (n, n_features) to float32 in [-clip, clip]."""
        x = _check_2d(x)
        if x.shape[1] != self.n_features:
            raise ValueError(f"scaler expects {self.n_features} features, got {x.shape[1]}")
        # float32 keeps the transform cheap; log1p(4e9) = 22.1 is exact enough in float32.
        x32 = np.asarray(x, dtype=np.float32)
        t = np.sign(x32) * np.log1p(np.abs(x32))
        t -= self._center
        t *= self._inv_half
        np.clip(t, -self.clip, self.clip, out=t)
        # NaN would poison the whole batch of a training step; map it to the centre.
        np.nan_to_num(t, copy=False, nan=0.0)
        return t

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "signed-log1p-minmax",
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        if d.get("kind", "signed-log1p-minmax") != "signed-log1p-minmax":
            raise ValueError(f"unknown scaler kind {d.get('kind')!r}")
        return cls(np.array(d["low"], dtype=np.float64), np.array(d["high"], dtype=np.float64), float(d["clip"]))


#: Smallest per-feature residual variance :class:`ResidualScale` divides by (scaled units squared, i.e. a
#: residual std of ~0.03 on the [-1, 1] scale). A feature the model reconstructs (almost) perfectly on normal
#: traffic, e.g. one that is constant there, would otherwise get an unbounded weight.
RESIDUAL_VAR_FLOOR = 1e-3


@dataclass
class ResidualScale:
    """Per-feature typical size of the reconstruction residuals on normal traffic (federatable).

    A plain reconstruction MSE is dominated by the features the model cannot predict on normal traffic
    (near-random fields, or features whose value depends on which of several normal sessions a packet
    belongs to), and a deviation in a feature that is nearly deterministic on normal traffic drowns in that
    noise. Dividing each squared residual by its mean on normal rows turns the score into a mean squared
    z-score (a diagonal Mahalanobis distance on the residuals): noisy features are down-weighted, tight ones
    up-weighted, and normal rows score ~1 on average.

    The statistic is a per-feature sum of squared residuals plus a row count, so the parts computed by each
    device merge by summation into exactly the statistic of the pooled rows (as :class:`FeatureStats`).

    Parameters
    ----------
    count : int
        Rows summarised.
    sumsq : np.ndarray
        float64 (n_features,): sum over rows of ``(reconstruction - input) ** 2`` in scaled units.
    floor : float
        Lower bound on the per-feature mean squared residual (see :data:`RESIDUAL_VAR_FLOOR`).
    """

    count: int
    sumsq: np.ndarray
    floor: float = RESIDUAL_VAR_FLOOR

    @property
    def n_features(self) -> int:
        return int(self.sumsq.shape[0])

    @classmethod
    def empty(cls, n_features: int, floor: float = RESIDUAL_VAR_FLOOR) -> ResidualScale:
        """Statistics of zero rows (the identity of :meth:`merge`)."""
        return cls(count=0, sumsq=np.zeros(n_features), floor=floor)

    @classmethod
    def of(cls, residuals: np.ndarray, floor: float = RESIDUAL_VAR_FLOOR) -> ResidualScale:
        """Summarise residuals ``reconstruction - scaled_input`` of shape (n, n_features)."""
        r = _check_2d(residuals)
        if r.shape[0] == 0:
            return cls.empty(r.shape[1], floor)
        r64 = np.asarray(r, dtype=np.float64)
        if not np.isfinite(r64).all():
            raise ValueError("residuals contain NaN or inf")
        return cls(count=int(r64.shape[0]), sumsq=np.einsum("ij,ij->j", r64, r64), floor=floor)

    def merge(self, other: ResidualScale) -> ResidualScale:
        """Statistics of the union of both summarised row sets (keeps this part's floor)."""
        if other.n_features != self.n_features:
            raise ValueError(f"cannot merge residual stats of {self.n_features} and {other.n_features} features")
        return ResidualScale(self.count + other.count, self.sumsq + other.sumsq, self.floor)

    @staticmethod
    def merge_all(parts: list[ResidualScale]) -> ResidualScale:
        """Merge any number of parts (at least one)."""
        if not parts:
            raise ValueError("no residual statistics to merge")
        return functools.reduce(ResidualScale.merge, parts)

    @property
    def variance(self) -> np.ndarray:
        """Per-feature mean squared residual, floored (all ``floor`` for an empty summary)."""
        return np.maximum(self.sumsq / max(self.count, 1), self.floor)

    @property
    def weights(self) -> np.ndarray:
        """float32 per-feature weights ``1 / variance / n_features``: ``sum(weights * r**2)`` is the mean
        squared z-score of a row."""
        return (1.0 / (self.variance * self.n_features)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "residual-meansq",
            "count": int(self.count),
            "sumsq": [float(v) for v in self.sumsq],
            "floor": float(self.floor),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResidualScale:
        if d.get("kind", "residual-meansq") != "residual-meansq":
            raise ValueError(f"unknown residual scale kind {d.get('kind')!r}")
        sumsq = np.array([float(v) for v in d["sumsq"]], dtype=np.float64)
        if sumsq.ndim != 1 or (sumsq < 0).any() or not np.isfinite(sumsq).all():
            raise ValueError("residual sumsq must be a list of finite non-negative numbers")
        floor = float(d.get("floor", RESIDUAL_VAR_FLOOR))
        if not floor > 0:
            raise ValueError("residual floor must be positive")
        return cls(count=int(d["count"]), sumsq=sumsq, floor=floor)
