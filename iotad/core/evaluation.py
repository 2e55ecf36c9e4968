"""Detection metrics from confusion counts and per-class error histograms.

Everything here works on aggregates (histograms on :data:`iotad.core.threshold.ERROR_BIN_EDGES`, confusion
counts), so the federation sums what devices send and calls the same functions as a centralised run.

Conventions
-----------
- Positive = attack (any traffic type other than :data:`iotad.data.schema.NORMAL`); a row is predicted
  anomalous when ``error >= threshold``.
- A ratio whose denominator is 0 is undefined and reported as ``None`` (JSON ``null``), never NaN:
  precision with no alarms, recall with no attacks, FPR with no normal rows, ROC-AUC and PR-AUC unless both
  classes are present. F1 is ``2tp / (2tp + fp + fn)`` (0 when there are attacks and none is caught).
- ROC-AUC and PR-AUC (average precision, sklearn's step definition) treat each bin as one score level:
  ties inside a bin count half for AUC. Against exact per-row scores the AUC differs by at most
  ``sum_k attack_k * normal_k / (2 * n_attack * n_normal)`` (pairs sharing a bin, bins ~1.13 % wide).
"""

from __future__ import annotations

from collections.abc import ItemsView
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iotad.core.threshold import ERROR_BIN_EDGES, N_BINS, bin_index, edge_index, error_histogram
from iotad.data.schema import NORMAL


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


@dataclass
class Confusion:
    """Confusion counts with attack as the positive class."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def n_attack(self) -> int:
        return self.tp + self.fn

    @property
    def n_normal(self) -> int:
        return self.fp + self.tn

    def to_dict(self) -> dict[str, int]:
        return {"tp": int(self.tp), "fp": int(self.fp), "tn": int(self.tn), "fn": int(self.fn)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Confusion:
        return cls(int(d["tp"]), int(d["fp"]), int(d["tn"]), int(d["fn"]))

    def metrics(self) -> dict[str, float | None]:
        """precision, recall, f1, accuracy, fpr (``None`` where undefined)."""
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        return {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
            "fpr": _ratio(fp, fp + tn),
        }


def confusion_from_errors(errors: np.ndarray, labels: np.ndarray, threshold: float) -> Confusion:
    """Exact confusion from per-row errors and 0/1 labels (1 = attack)."""
    e = np.asarray(errors, dtype=np.float64)
    y = np.asarray(labels)
    if e.shape != y.shape:
        raise ValueError("errors and labels differ in shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (unlabelled rows cannot be evaluated)")
    pred = e >= threshold
    att = y == 1
    return Confusion(
        tp=int(np.sum(pred & att)),
        fp=int(np.sum(pred & ~att)),
        tn=int(np.sum(~pred & ~att)),
        fn=int(np.sum(~pred & att)),
    )


@dataclass
class ClassHistograms:
    """Error histogram per traffic type (``NORMAL`` or an attack type), on ``ERROR_BIN_EDGES``."""

    counts: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, errors: np.ndarray, traffic_types: np.ndarray) -> ClassHistograms:
        """Histograms of ``errors`` grouped by ``traffic_types`` (strings, one per row)."""
        e = np.asarray(errors, dtype=np.float64)
        types = np.asarray(traffic_types).astype(str)
        if e.shape != types.shape:
            raise ValueError("errors and traffic_types differ in shape")
        if (types == "").any():
            raise ValueError("unlabelled rows (empty traffic type) cannot be evaluated")
        out = cls()
        if e.size == 0:
            return out
        bins = bin_index(e)
        uniq, inv = np.unique(types, return_inverse=True)
        flat = np.bincount(inv * N_BINS + bins, minlength=len(uniq) * N_BINS).reshape(len(uniq), N_BINS)
        for i, t in enumerate(uniq):
            out.counts[str(t)] = flat[i].astype(np.int64)
        return out

    def add(self, traffic_type: str, errors: np.ndarray) -> None:
        """Add errors of one traffic type in place."""
        if not traffic_type:
            raise ValueError("empty traffic type")
        h = error_histogram(errors)
        self.counts[traffic_type] = self.counts.get(traffic_type, np.zeros(N_BINS, np.int64)) + h

    def merge(self, other: ClassHistograms) -> ClassHistograms:
        """Sum of both (a new object)."""
        out = {k: v.copy() for k, v in self.counts.items()}
        for k, v in other.counts.items():
            out[k] = out[k] + v if k in out else v.copy()
        return ClassHistograms(out)

    @staticmethod
    def merge_all(parts: list[ClassHistograms]) -> ClassHistograms:
        out = ClassHistograms()
        for p in parts:
            out = out.merge(p)
        return out

    def items(self) -> ItemsView[str, np.ndarray]:
        return self.counts.items()

    def normal(self) -> np.ndarray:
        return self.counts.get(NORMAL, np.zeros(N_BINS, np.int64)).copy()

    def attack(self) -> np.ndarray:
        out = np.zeros(N_BINS, np.int64)
        for k, v in self.counts.items():
            if k != NORMAL:
                out += v
        return out

    @property
    def attack_types(self) -> list[str]:
        """Attack types with at least one row, sorted."""
        return sorted(k for k, v in self.counts.items() if k != NORMAL and v.sum() > 0)

    def to_dict(self) -> dict[str, Any]:
        """Sparse JSON-safe form: ``{"bins": N, "counts": {type: {"index": [...], "count": [...]}}}``."""
        counts = {}
        for k, v in sorted(self.counts.items()):
            nz = np.flatnonzero(v)
            counts[k] = {"index": [int(i) for i in nz], "count": [int(c) for c in v[nz]]}
        return {"bins": N_BINS, "counts": counts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassHistograms:
        if int(d.get("bins", N_BINS)) != N_BINS:
            raise ValueError(f"histograms have {d.get('bins')} bins, expected {N_BINS}")
        out = cls()
        for k, v in d["counts"].items():
            h = np.zeros(N_BINS, np.int64)
            if isinstance(v, dict):
                h[np.asarray(v["index"], dtype=np.int64)] = np.asarray(v["count"], dtype=np.int64)
            else:
                h[:] = np.asarray(v, dtype=np.int64)
            out.counts[str(k)] = h
        return out


def _tail_counts(h: np.ndarray) -> np.ndarray:
    """``tail[k] = h[k:].sum()`` for k in 0..N_BINS (tail[N_BINS] = 0)."""
    return np.concatenate([np.cumsum(h[::-1])[::-1], [0]]).astype(np.int64)


def confusion_from_histograms(h: ClassHistograms, threshold: float) -> Confusion:
    """Confusion at ``threshold`` (exact when it is an inner bin edge, as thresholds from
    :func:`iotad.core.threshold.threshold_from_histogram` are; otherwise bins from the first edge
    ``>= threshold`` upwards count as alarms)."""
    k = edge_index(threshold)
    normal, attack = h.normal(), h.attack()
    fp, tp = int(normal[k:].sum()), int(attack[k:].sum())
    return Confusion(tp=tp, fp=fp, tn=int(normal.sum()) - fp, fn=int(attack.sum()) - tp)


def roc_auc_from_histograms(h: ClassHistograms) -> float | None:
    """ROC-AUC with bins as score levels (ties count half); ``None`` unless both classes are present."""
    normal, attack = h.normal().astype(np.float64), h.attack().astype(np.float64)
    n_n, n_a = normal.sum(), attack.sum()
    if n_n == 0 or n_a == 0:
        return None
    normal_below = np.cumsum(normal) - normal
    return float(np.sum(attack * (normal_below + 0.5 * normal)) / (n_a * n_n))


def pr_auc_from_histograms(h: ClassHistograms) -> float | None:
    """Average precision ``sum (R_k - R_{k+1}) P_k`` over bin thresholds (high to low);
    ``None`` unless both classes are present."""
    normal, attack = h.normal(), h.attack()
    if normal.sum() == 0 or attack.sum() == 0:
        return None
    tp, fp = _tail_counts(attack)[:N_BINS], _tail_counts(normal)[:N_BINS]
    gained = attack > 0  # recall only steps up at bins holding attacks; there tp + fp > 0
    prec = tp[gained] / (tp[gained] + fp[gained])
    return float(np.sum(attack[gained] / attack.sum() * prec))


def roc_curve_from_histograms(h: ClassHistograms) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)`` from (0, 0) to (1, 1), one per occupied bin, for plots.

    Empty arrays when either class is missing (the curve is undefined).
    """
    normal, attack = h.normal(), h.attack()
    n_n, n_a = normal.sum(), attack.sum()
    if n_n == 0 or n_a == 0:
        return np.array([]), np.array([])
    fp, tp = _tail_counts(normal), _tail_counts(attack)
    # Nothing flagged (k = N_BINS), then lower the threshold one occupied bin at a time.
    ks = np.concatenate([[N_BINS], np.flatnonzero((normal + attack) > 0)[::-1]])
    return fp[ks] / n_n, tp[ks] / n_a


def pr_curve_from_histograms(h: ClassHistograms) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall points ``(recall, precision)``, starting at (0, 1), one per occupied bin."""
    normal, attack = h.normal(), h.attack()
    n_a = attack.sum()
    if n_a == 0:
        return np.array([0.0]), np.array([1.0])
    fp, tp = _tail_counts(normal)[:N_BINS], _tail_counts(attack)[:N_BINS]
    ks = np.flatnonzero((normal + attack) > 0)[::-1]
    recall = np.concatenate([[0.0], tp[ks] / n_a])
    precision = np.concatenate([[1.0], tp[ks] / (tp[ks] + fp[ks])])
    return recall, precision


def metrics_from_histograms(h: ClassHistograms, threshold: float) -> dict[str, Any]:
    """All summary metrics as a JSON-safe dict (``None`` for undefined values).

    Keys: precision, recall, f1, accuracy, fpr, roc_auc, pr_auc, threshold, n_normal, n_attack,
    per_attack_recall {type: recall}, confusion {tp, fp, tn, fn}.
    """
    conf = confusion_from_histograms(h, threshold)
    k = edge_index(threshold)
    per_attack = {t: _ratio(int(h.counts[t][k:].sum()), int(h.counts[t].sum())) for t in h.attack_types}
    out: dict[str, Any] = dict(conf.metrics())
    out.update(
        roc_auc=roc_auc_from_histograms(h),
        pr_auc=pr_auc_from_histograms(h),
        threshold=float(threshold),
        n_normal=conf.n_normal,
        n_attack=conf.n_attack,
        per_attack_recall=per_attack,
        confusion=conf.to_dict(),
    )
    return out


__all__ = [
    "ERROR_BIN_EDGES",
    "ClassHistograms",
    "Confusion",
    "confusion_from_errors",
    "confusion_from_histograms",
    "metrics_from_histograms",
    "pr_auc_from_histograms",
    "pr_curve_from_histograms",
    "roc_auc_from_histograms",
    "roc_curve_from_histograms",
]
