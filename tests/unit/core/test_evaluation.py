"""Metrics from histograms: hand-made confusions, rank-based AUC, merges, undefined values."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from iotad.core.evaluation import (
    ClassHistograms,
    Confusion,
    confusion_from_errors,
    confusion_from_histograms,
    metrics_from_histograms,
    pr_auc_from_histograms,
    pr_curve_from_histograms,
    roc_auc_from_histograms,
    roc_curve_from_histograms,
)
from iotad.core.threshold import BIN_RATIO, ERROR_BIN_EDGES, bin_index
from iotad.data.schema import NORMAL


def _rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_p, n_n = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's step-wise average precision, one threshold per distinct score."""
    thresholds = np.unique(scores)[::-1]
    n_p = labels.sum()
    ap, prev_recall = 0.0, 0.0
    for t in thresholds:
        flagged = scores >= t
        tp = np.sum(flagged & (labels == 1))
        recall, precision = tp / n_p, tp / flagged.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


def _scored(seed: int, n_normal: int = 3000, n_attack: int = 800) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.lognormal(-6.0, 1.0, n_normal)
    attack_types = rng.choice(np.array(["DDoS_UDP", "XSS", "MITM"]), size=n_attack)
    shift = np.where(attack_types == "DDoS_UDP", 3.0, np.where(attack_types == "XSS", 0.5, 1.5))
    attack = rng.lognormal(-6.0 + shift, 1.0)
    errors = np.concatenate([normal, attack])
    types = np.concatenate([np.full(n_normal, NORMAL), attack_types]).astype(object)
    labels = (types != NORMAL).astype(np.int8)
    return errors, types, labels


def test_confusion_hand_computed() -> None:
    errors = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 0, 1, 0, 1, 1])
    c = confusion_from_errors(errors, labels, 0.35)
    assert c == Confusion(tp=2, fp=1, tn=2, fn=1)
    m = c.metrics()
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["fpr"] == pytest.approx(1 / 3)
    # The threshold itself is an alarm (>=).
    assert confusion_from_errors(errors, labels, 0.3).tp == 3


def test_confusion_from_histograms_equals_exact_at_edge_thresholds() -> None:
    errors, types, labels = _scored(1)
    h = ClassHistograms.of(errors, types)
    for k in (700, 900, 1000, 1200):
        t = float(ERROR_BIN_EDGES[k])
        assert confusion_from_histograms(h, t) == confusion_from_errors(errors, labels, t)


def test_roc_auc_matches_rank_auc_within_binning() -> None:
    errors, types, labels = _scored(2)
    h = ClassHistograms.of(errors, types)
    auc = roc_auc_from_histograms(h)
    assert auc is not None
    assert auc == pytest.approx(_rank_auc(errors, labels), abs=2e-3)
    # Exactly the rank AUC of the binned scores (ties within a bin count half).
    assert auc == pytest.approx(_rank_auc(bin_index(errors).astype(float), labels), abs=1e-12)


def test_pr_auc_matches_average_precision_within_binning() -> None:
    errors, types, labels = _scored(3)
    h = ClassHistograms.of(errors, types)
    ap = pr_auc_from_histograms(h)
    assert ap is not None
    assert ap == pytest.approx(_average_precision(errors, labels), abs=5e-3)
    assert ap == pytest.approx(_average_precision(bin_index(errors).astype(float), labels), abs=1e-12)


def test_perfect_and_inverted_separation() -> None:
    lo, hi = np.full(10, 1e-4), np.full(5, 1e-1)
    good = ClassHistograms.of(np.concatenate([lo, hi]), np.array([NORMAL] * 10 + ["XSS"] * 5))
    assert roc_auc_from_histograms(good) == 1.0 and pr_auc_from_histograms(good) == 1.0
    bad = ClassHistograms.of(np.concatenate([hi[:1].repeat(10), lo[:5]]), np.array([NORMAL] * 10 + ["XSS"] * 5))
    assert roc_auc_from_histograms(bad) == 0.0


def test_merge_of_parts_equals_whole_and_metrics_agree() -> None:
    errors, types, _ = _scored(4)
    whole = ClassHistograms.of(errors, types)
    cuts = [0, 5, 1800, 3500, len(errors)]
    parts = [ClassHistograms.of(errors[a:b], types[a:b]) for a, b in itertools.pairwise(cuts)]
    merged = ClassHistograms.merge_all(parts)
    assert merged.counts.keys() == whole.counts.keys()
    for k in whole.counts:
        np.testing.assert_array_equal(merged.counts[k], whole.counts[k])
    t = float(ERROR_BIN_EDGES[1000])
    assert metrics_from_histograms(merged, t) == metrics_from_histograms(whole, t)
    # Confusions of parts add up too.
    total = sum((confusion_from_histograms(p, t) for p in parts), Confusion())
    assert total == confusion_from_histograms(whole, t)


def test_metrics_dict_contents_and_per_attack_recall() -> None:
    errors, types, labels = _scored(5)
    h = ClassHistograms.of(errors, types)
    t = float(ERROR_BIN_EDGES[1100])
    m = metrics_from_histograms(h, t)
    expected_keys = {"precision", "recall", "f1", "accuracy", "fpr", "roc_auc", "pr_auc", "threshold"}
    assert expected_keys | {"n_normal", "n_attack", "per_attack_recall", "confusion"} == set(m)
    assert m["n_normal"] == 3000 and m["n_attack"] == 800
    assert m["confusion"] == confusion_from_errors(errors, labels, t).to_dict()
    for attack in ("DDoS_UDP", "XSS", "MITM"):
        rows = types == attack
        assert m["per_attack_recall"][attack] == pytest.approx(np.mean(errors[rows] >= t))
    assert m["per_attack_recall"]["DDoS_UDP"] > m["per_attack_recall"]["XSS"]
    json.dumps(m, allow_nan=False)


def test_undefined_metrics_are_none_and_json_valid() -> None:
    only_normal = ClassHistograms.of(np.array([1e-4, 2e-4]), np.array([NORMAL, NORMAL]))
    m = metrics_from_histograms(only_normal, 1.0)
    assert m["recall"] is None and m["roc_auc"] is None and m["pr_auc"] is None
    assert m["precision"] is None  # no alarms
    assert m["f1"] is None  # no attacks and no false alarms
    assert m["fpr"] == 0.0 and m["accuracy"] == 1.0 and m["per_attack_recall"] == {}
    only_attack = ClassHistograms.of(np.array([1e-4]), np.array(["XSS"]))
    m = metrics_from_histograms(only_attack, 1.0)
    assert m["fpr"] is None and m["recall"] == 0.0 and m["f1"] == 0.0
    empty = metrics_from_histograms(ClassHistograms(), 1.0)
    assert empty["accuracy"] is None
    for d in (m, empty):
        json.dumps(d, allow_nan=False)


def test_curves_are_monotone_from_corner_to_corner() -> None:
    errors, types, _ = _scored(6)
    h = ClassHistograms.of(errors, types)
    fpr, tpr = roc_curve_from_histograms(h)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_from_histograms(h), abs=1e-12)
    recall, precision = pr_curve_from_histograms(h)
    assert recall[0] == 0.0 and recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)
    assert np.all((precision >= 0) & (precision <= 1))
    assert roc_curve_from_histograms(ClassHistograms())[0].size == 0


def test_histograms_round_trip_sparse_and_dense() -> None:
    errors, types, _ = _scored(7, 100, 20)
    h = ClassHistograms.of(errors, types)
    back = ClassHistograms.from_dict(json.loads(json.dumps(h.to_dict())))
    dense = ClassHistograms.from_dict({"counts": {k: v.tolist() for k, v in h.items()}})
    for other in (back, dense):
        assert other.counts.keys() == h.counts.keys()
        for k in h.counts:
            np.testing.assert_array_equal(other.counts[k], h.counts[k])


def test_add_and_validation() -> None:
    h = ClassHistograms()
    h.add(NORMAL, np.array([1e-3, 2e-3]))
    h.add(NORMAL, np.array([3e-3]))
    assert h.normal().sum() == 3 and h.attack().sum() == 0
    with pytest.raises(ValueError, match="unlabelled"):
        ClassHistograms.of(np.array([1e-3]), np.array([""]))
    with pytest.raises(ValueError, match="0/1"):
        confusion_from_errors(np.array([1.0]), np.array([-1]), 0.5)
    with pytest.raises(ValueError, match="bins"):
        ClassHistograms.from_dict({"bins": 10, "counts": {}})


def test_binning_tolerance_bound_holds() -> None:
    # The documented AUC error bound: pairs sharing a bin, at most half of them misjudged.
    errors, types, labels = _scored(8)
    h = ClassHistograms.of(errors, types)
    bound = float(np.sum(h.normal() * h.attack())) / (2 * 3000 * 800)
    assert abs(roc_auc_from_histograms(h) - _rank_auc(errors, labels)) <= bound + 1e-12
    assert BIN_RATIO < 1.012
