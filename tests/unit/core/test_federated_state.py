"""Federated aggregates merge to exactly what a centralised fit on the union gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iotad.core import local_steps
from iotad.core.evaluation import ClassHistograms, confusion_from_errors, confusion_from_histograms
from iotad.core.model import Autoencoder
from iotad.core.preprocessing import FeatureStats, Scaler
from iotad.core.scoring import reconstruction_errors
from iotad.core.threshold import error_histogram, threshold_from_histogram
from iotad.core.train import get_weights
from iotad.data.device import load_device_splits
from iotad.data.schema import N_FEATURES, NORMAL
from iotad.data.synthetic import write_synthetic
from iotad.data.traffic import Traffic


@pytest.fixture(scope="module")
def device_splits(tmp_path_factory: pytest.TempPathFactory) -> list:
    root = tmp_path_factory.mktemp("fed")
    write_synthetic(root / "data", devices=3, rows_per_device=1500, seed=5)
    return [load_device_splits(root / "data" / f"device-{k}", seed=0, cache_dir=root / "cache") for k in range(3)]


@pytest.fixture(scope="module")
def global_model() -> list[np.ndarray]:
    torch.manual_seed(0)
    return get_weights(Autoencoder(N_FEATURES))


def test_merged_scaler_equals_centralised_fit(device_splits: list) -> None:
    merged = FeatureStats.merge_all([local_steps.feature_stats(s) for s in device_splits])
    union = FeatureStats.of(Traffic.concat([s.train for s in device_splits]).features)
    assert merged.count == union.count
    for name in ("sum", "sumsq", "min", "max"):
        np.testing.assert_allclose(getattr(merged, name), getattr(union, name), rtol=1e-9, atol=1e-9)
    x = Traffic.concat([s.evaluation for s in device_splits]).features
    np.testing.assert_allclose(
        Scaler.from_stats(merged).transform(x), Scaler.from_stats(union).transform(x), rtol=1e-6, atol=1e-6
    )


def test_merged_threshold_equals_centralised(device_splits: list, global_model: list[np.ndarray]) -> None:
    scaler = Scaler.from_stats(FeatureStats.merge_all([local_steps.feature_stats(s) for s in device_splits]))
    merged = np.sum([local_steps.calibration_histogram(s, global_model, scaler) for s in device_splits], axis=0)
    model = Autoencoder(N_FEATURES)
    from iotad.core.train import set_weights

    set_weights(model, global_model)
    union = Traffic.concat([s.calibration for s in device_splits])
    errors = reconstruction_errors(model, scaler.transform(union.features))
    assert np.array_equal(merged, error_histogram(errors))
    # Same bins, same quantile: identical thresholds; within one bin (1.13 %) of the exact quantile.
    threshold = threshold_from_histogram(merged, 0.99)
    assert threshold == threshold_from_histogram(error_histogram(errors), 0.99)
    exact = float(np.quantile(errors, 0.99, method="inverted_cdf"))
    assert exact < threshold <= exact * 1.0114


def test_merged_confusion_equals_centralised(device_splits: list, global_model: list[np.ndarray]) -> None:
    scaler = Scaler.from_stats(FeatureStats.merge_all([local_steps.feature_stats(s) for s in device_splits]))
    threshold = threshold_from_histogram(
        np.sum([local_steps.calibration_histogram(s, global_model, scaler) for s in device_splits], axis=0), 0.9
    )
    local = [local_steps.evaluate(s, global_model, scaler, threshold) for s in device_splits]
    summed = local[0].confusion
    for part in local[1:]:
        summed = summed + part.confusion
    merged_h = ClassHistograms.merge_all([p.histograms for p in local])

    from iotad.core.train import set_weights

    model = Autoencoder(N_FEATURES)
    set_weights(model, global_model)
    union = Traffic.concat([s.evaluation for s in device_splits])
    errors = reconstruction_errors(model, scaler.transform(union.features))
    central = confusion_from_errors(errors, union.labels, threshold)
    assert summed == central
    assert confusion_from_histograms(merged_h, threshold) == central
    types = np.where(union.labels == 1, union.attack_types, NORMAL)
    assert all(np.array_equal(merged_h.counts[t], ClassHistograms.of(errors, types).counts[t]) for t in set(types))
    assert central.n_attack > 0 and central.n_normal > 0


def test_device_splits_are_cached(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "d", devices=1, rows_per_device=300, seed=1)
    csv = tmp_path / "d" / "device-0" / "traffic.csv"
    with open(csv, "ab") as f:
        f.write(b"1,2,3\n")  # a rejected row: its count must survive the cache
    a = load_device_splits(tmp_path / "d" / "device-0", seed=3, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("splits-*.npz"))) == 1
    b = load_device_splits(tmp_path / "d" / "device-0", seed=3, cache_dir=tmp_path / "c")
    for part in ("train", "calibration", "evaluation"):
        assert np.array_equal(getattr(a, part).features, getattr(b, part).features)
        assert list(getattr(a, part).attack_types) == list(getattr(b, part).attack_types)
        assert getattr(b, part).rejected == a.train.rejected and getattr(b, part).rows_read == a.train.rows_read
    assert a.train.rejected["column_count"] == 1 and a.train.rows_read == 301
    assert not set(a.train.row_index) & set(a.calibration.row_index)
    assert (a.train.labels == 0).all() and (a.calibration.labels == 0).all()


def test_merged_residual_scale_equals_centralised(device_splits: list, global_model: list[np.ndarray]) -> None:
    from iotad.core.preprocessing import ResidualScale
    from iotad.core.scoring import residual_sumsq
    from iotad.core.train import set_weights

    scaler = Scaler.from_stats(FeatureStats.merge_all([local_steps.feature_stats(s) for s in device_splits]))
    merged = ResidualScale.merge_all([local_steps.residual_stats(s, global_model, scaler) for s in device_splits])
    model = Autoencoder(N_FEATURES)
    set_weights(model, global_model)
    union = scaler.transform(Traffic.concat([s.train for s in device_splits]).features)
    assert merged.count == len(union)
    np.testing.assert_allclose(merged.sumsq, residual_sumsq(model, union), rtol=1e-5)
    # With the merged scale, device histograms still merge into the pooled one exactly.
    hist = np.sum([local_steps.calibration_histogram(s, global_model, scaler, merged) for s in device_splits], axis=0)
    calib = Traffic.concat([s.calibration for s in device_splits]).features
    pooled = reconstruction_errors(model, scaler.transform(calib), feature_weights=merged.weights)
    assert np.array_equal(hist, error_histogram(pooled))


def test_local_normaliser_is_remembered_by_content_and_never_stale(device_splits: list,
                                                                   global_model: list[np.ndarray]) -> None:
    from dataclasses import replace

    from iotad.core.normalisation import QUANTILE, fit_scaler

    splits = device_splits[0]
    scaler = local_steps.local_scaler(splits)
    assert local_steps.local_scaler(splits) is scaler  # a second message of the same process refits nothing
    x = splits.evaluation.features
    assert np.array_equal(scaler.transform(x), fit_scaler(splits.train.features, QUANTILE).transform(x))
    changed = replace(splits, train=splits.train.take(np.arange(len(splits.train) - 1)))
    assert local_steps.local_scaler(changed) is not scaler  # other rows, another scaler

    residual = local_steps.local_residual(splits, global_model)
    assert local_steps.local_residual(splits, global_model) is residual
    np.testing.assert_array_equal(residual.sumsq, local_steps.residual_stats(splits, global_model, scaler).sumsq)
    moved = [w + 0.01 for w in global_model]
    assert not np.array_equal(local_steps.local_residual(splits, moved).sumsq, residual.sumsq)
