"""FedAvg and variants of it without Flower: which aggregation closes the gap to the centralised model.

Emulates ``iotad simulate`` in one process with the package's own per-device steps (:mod:`iotad.core.local_steps`:
federated scaler, local training on the run-wide learning-rate schedule, merged residual scale, merged
calibration histograms, merged evaluation) and replaces Flower's FedAvg by an aggregation rule written here,
so rules that Flower does not offer can be measured in seconds. Devices' shuffling seeds are the simulation's;
replies are summed in device order (the simulation sums them in content order), so a run is close to, not
bit-identical with, ``iotad simulate`` of the same seed. ``central`` trains one model on the pooled rows like
``iotad centralized``. One JSON, ``OUT/NAME.json`` (``--name``, default ``fedavg-emulation``).

    python -m bench.bench_fedavg_emulation --data D5 [--seeds 4 --members 1 --variants central fedavg ...]

A variant is ``RULE`` or ``RULE:key=value,...``; rules ``central``, ``fedavg``, ``fedadam``, ``magnitude``;
keys ``rounds``, ``epochs``, ``server_lr``, ``power``, ``local_scaler``, ``local_residual``, ``device_threshold``
(see ``Variant``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core import local_steps
from iotad.core.evaluation import ClassHistograms, Confusion, metrics_from_histograms
from iotad.core.model import Autoencoder
from iotad.core.preprocessing import FeatureStats, ResidualScale, Scaler
from iotad.core.runs import device_dirs
from iotad.core.threshold import threshold_from_histogram
from iotad.core.train import TrainConfig, get_weights, seeded_weights, set_weights, train_autoencoder
from iotad.data.device import load_device_splits
from iotad.data.schema import N_FEATURES
from iotad.data.splits import Splits

QUANTILE = 0.99
ADAM_BETAS, ADAM_TAU = (0.9, 0.99), 1e-3  # FedAdam as in Reddi et al., ICLR 2021

Weights = list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration to emulate.

    rule: ``central`` (pooled rows), ``fedavg`` (row-weighted mean), ``fedadam`` (server Adam on the mean
    update), ``magnitude`` (per coordinate, each device's update weighted by rows x |update|^power: a weight
    that only one device moves keeps that device's step instead of a fifth of it).
    local_scaler: every device scales with its own statistics instead of the federated scaler (``central``:
    the pooled rows are each scaled by their device's statistics).
    local_residual: every device weights its score's features by its own residual scale instead of the merged one.
    device_threshold: F1 from each device's own 0.99 quantile instead of the merged one.
    """

    rule: str = "fedavg"
    rounds: int = 5
    epochs: int = 12
    server_lr: float = 1.0
    power: float = 1.0
    local_scaler: bool = False
    local_residual: bool = False
    device_threshold: bool = False

    @classmethod
    def parse(cls, spec: str) -> Variant:
        rule, _, rest = spec.partition(":")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {"epochs": 20} if rule == "central" else {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key not in fields or key == "rule":
                raise ValueError(f"unknown key {key!r} in {spec!r}")
            kind = fields[key]
            kwargs[key] = value not in ("0", "false") if kind == "bool" else (int if kind == "int" else float)(value)
        if rule not in ("central", "fedavg", "fedadam", "magnitude"):
            raise ValueError(f"unknown rule {rule!r}")
        return cls(rule=rule, **kwargs)


def mean_update(replies: Sequence[Weights], rows: Sequence[int]) -> Weights:
    """FedAvg: the row-weighted mean of the replies."""
    total = sum(rows)
    return [np.sum([n * r[i] for n, r in zip(rows, replies, strict=True)], axis=0) / total
            for i in range(len(replies[0]))]


def magnitude_mean(start: Weights, replies: Sequence[Weights], rows: Sequence[int], power: float) -> Weights:
    out = []
    for i, w in enumerate(start):
        deltas = np.stack([r[i] - w for r in replies])
        weight = np.abs(deltas) ** power * np.asarray(rows, dtype=np.float64).reshape(-1, *[1] * w.ndim)
        out.append(w + (weight * deltas).sum(0) / np.maximum(weight.sum(0), 1e-20))
    return out


class FedAdam:
    """Server-side Adam on the mean update (Reddi et al., "Adaptive Federated Optimization", ICLR 2021)."""

    def __init__(self, start: Weights, lr: float) -> None:
        self.lr, self.m = lr, [np.zeros_like(w) for w in start]
        self.v = [np.full_like(w, ADAM_TAU**2) for w in start]

    def step(self, start: Weights, mean: Weights) -> Weights:
        (b1, b2), out = ADAM_BETAS, []
        for i, w in enumerate(start):
            d = mean[i] - w
            self.m[i] = b1 * self.m[i] + (1 - b1) * d
            self.v[i] = b2 * self.v[i] + (1 - b2) * d**2
            out.append(w + self.lr * self.m[i] / (np.sqrt(self.v[i]) + ADAM_TAU))
        return out


def train_central(v: Variant, splits: list[Splits], scalers: list[Scaler], weights: Weights, seed: int) -> Weights:
    """One training on every device's rows pooled, as ``iotad centralized``."""
    x = np.concatenate([sc.transform(s.train.features) for s, sc in zip(splits, scalers, strict=True)])
    model = Autoencoder.for_weights(weights, x.shape[1])
    set_weights(model, weights)
    train_autoencoder(model, x, TrainConfig(epochs=v.epochs, seed=seed))
    return get_weights(model)


def train_federated(v: Variant, splits: list[Splits], scalers: list[Scaler], weights: Weights, seed: int) -> Weights:
    names = [zlib.crc32(f"device-{k}".encode()) % 1000 for k in range(len(splits))]  # as iotad.fl.client_app
    rows = [len(s.train) for s in splits]
    adam = FedAdam(weights, v.server_lr) if v.rule == "fedadam" else None
    for r in range(v.rounds):
        replies = []
        for s, scaler, name in zip(splits, scalers, names, strict=True):
            cfg = TrainConfig(epochs=v.epochs, seed=seed * 1_000_000 + (r + 1) * 1000 + name,
                              schedule_part=r, schedule_parts=v.rounds)
            replies.append(local_steps.train(s, weights, scaler, cfg)[0])
        if v.rule == "magnitude":
            new = magnitude_mean(weights, replies, rows, v.power)
        else:
            mean = mean_update(replies, rows)
            step = zip(weights, mean, strict=True)
            new = adam.step(weights, mean) if adam else [w + v.server_lr * (m - w) for w, m in step]
        weights = [w.astype(np.float32) for w in new]
    return weights


def run(v: Variant, data: Path, seed: int, members: int, cache: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    splits = [load_device_splits(d, seed, cache_dir=cache) for d in device_dirs(data)]
    merged = Scaler.from_stats(FeatureStats.merge_all([local_steps.feature_stats(s) for s in splits]))
    scalers = [Scaler.from_stats(local_steps.feature_stats(s)) if v.local_scaler else merged for s in splits]
    weights = seeded_weights(N_FEATURES, seed, members)  # as the ServerApp's initial model
    if v.rule == "central":
        weights = train_central(v, splits, scalers, weights, seed)
    else:
        weights = train_federated(v, splits, scalers, weights, seed)
    residuals = [local_steps.residual_stats(s, weights, sc) for s, sc in zip(splits, scalers, strict=True)]
    if not v.local_residual:
        residuals = [ResidualScale.merge_all(residuals)] * len(splits)
    devices = list(zip(splits, scalers, residuals, strict=True))
    calibration = [local_steps.calibration_histogram(s, weights, sc, rs) for s, sc, rs in devices]
    threshold = threshold_from_histogram(np.sum(calibration, axis=0), QUANTILE)
    histograms, confusion = ClassHistograms({}), Confusion()
    for (s, sc, rs), hist in zip(devices, calibration, strict=True):
        local = threshold_from_histogram(hist, QUANTILE) if v.device_threshold else threshold
        evaluated = local_steps.evaluate(s, weights, sc, local, rs)
        histograms, confusion = histograms.merge(evaluated.histograms), confusion + evaluated.confusion
    metrics = metrics_from_histograms(histograms, threshold)
    f1 = 2 * confusion.tp / max(2 * confusion.tp + confusion.fp + confusion.fn, 1)
    return {"seed": seed, "f1": f1, "roc_auc": metrics["roc_auc"], "seconds": time.monotonic() - t0}


def _job(args: tuple[str, Path, int, int, Path]) -> tuple[str, dict[str, Any]]:
    spec, data, seed, members, cache = args
    return spec, run(Variant.parse(spec), data, seed, members, cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=["central", "fedavg"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="fedavg-emulation", help="results file OUT/NAME.json")
    a = p.parse_args()
    for spec in a.variants:
        Variant.parse(spec)  # fail before any training
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iotad-emulation-") as cache, Pool(a.jobs) as pool:
        jobs = [(s, a.data.resolve(), seed, a.members, Path(cache)) for s in a.variants for seed in range(a.seeds)]
        results = pool.map(_job, jobs)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for spec, r in results:
        runs[spec].append(r)
    table: dict[str, dict[str, Any]] = {
        spec: {
            "f1_mean": statistics.fmean(r["f1"] for r in rs),
            "roc_auc_mean": statistics.fmean(r["roc_auc"] for r in rs),
            "runs": rs,
        }
        for spec, rs in runs.items()
    }
    a.out.mkdir(parents=True, exist_ok=True)
    out = {"data": str(a.data), "data_kind": "synthetic", "seeds": a.seeds, "members": a.members,
           "seconds": time.monotonic() - t0, "variants": table}
    (a.out / f"{a.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    for spec, row in table.items():
        per_seed = " ".join(f"{r['roc_auc']:.3f}" for r in row["runs"])
        print(f"{spec:40s} F1 {row['f1_mean']:.3f}  ROC-AUC {row['roc_auc_mean']:.3f}  ({per_seed})")


if __name__ == "__main__":
    main()
