"""Training throughput and detection quality: seed-style loop vs iotad's loop, in one run, same data.

Seed-style loop (what the original notebook did): a ``Dataset`` returning one row tensor per
``__getitem__``, a shuffling ``DataLoader`` with batch 32, ``MSELoss(reduction="sum")``, Adam 1e-3,
``loss.item()`` after every batch, the seed architecture with ``nn.Dropout``.
iotad loop: :func:`iotad.core.train.train_autoencoder` (whole data as one tensor shuffled once per epoch into a
reused buffer, batch 256, fused Adam, lr 4e-3 with a cosine schedule and warm-up, loss kept on-tensor, one
host sync per epoch).

Both start from the same initial weights, train on the same scaled normal rows with the same
``torch.set_num_threads``, and are scored the same way, the :class:`iotad.core.detector.Detector`'s way: the
per-feature residual scale measured on the training rows weights the squared residuals (mean squared
z-score), threshold at the 0.99 quantile of held-out normal scores, metrics on a labelled evaluation mix
via :mod:`iotad.core.evaluation` (plain-MSE scoring is reported too, as ``quality_mse_mean``). Each loop gets its
own epoch count (defaults: seed 3, iotad 15). Reported: samples/s (throughput) and the time ratio
iotad / seed, which is the time-to-quality ratio when iotad's quality is at least the seed loop's (flagged
in ``ratio.quality_at_least_seed``). CPU figures (process CPU time) are less sensitive to other load on the
machine than wall figures.

Run: ``python -m bench.bench_train`` (writes ``bench/results/train.json``, prints a markdown table).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from iotad.core.evaluation import ClassHistograms, metrics_from_histograms
from iotad.core.model import Autoencoder, FastDropout, MirrorAutoencoder
from iotad.core.preprocessing import FeatureStats, ResidualScale, Scaler
from iotad.core.scoring import reconstruction_errors, residual_sumsq
from iotad.core.threshold import error_histogram, threshold_from_histogram
from iotad.core.train import TrainConfig, train_autoencoder

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
QUANTILE = 0.99


def _wait_for(module: str, attr: str, wait_s: float) -> Any:
    """Import ``module.attr``, polling while a parallel worker is still writing it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            if time.monotonic() >= deadline:
                raise SystemExit(f"{module}.{attr} is not available ({e}); the benchmark needs it") from e
            sys.modules.pop(module, None)
            time.sleep(10)


def load_data(devices: int, rows: int, seed: int, wait_s: float) -> dict[str, np.ndarray]:
    """Synthetic traffic through the real generator and loader; normal rows split 60/15/25."""
    write_synthetic = _wait_for("iotad.data.synthetic", "write_synthetic", wait_s)
    load_traffic = _wait_for("iotad.data.loader", "load_traffic", wait_s)
    with tempfile.TemporaryDirectory(prefix="iotad-bench-") as tmp:
        traffic = load_traffic(write_synthetic(Path(tmp), devices, rows, seed))
    normal = np.random.default_rng(seed).permutation(np.flatnonzero(traffic.labels == 0))
    attack = np.flatnonzero(traffic.labels == 1)
    n_train, n_cal = int(0.6 * len(normal)), int(0.15 * len(normal))
    ev = np.concatenate([normal[n_train + n_cal :], attack])
    types = np.asarray(traffic.attack_types).astype(str)
    return {
        "train": traffic.features[normal[:n_train]],
        "calibration": traffic.features[normal[n_train : n_train + n_cal]],
        "evaluation": traffic.features[ev],
        "evaluation_types": types[ev],
    }


class _RowDataset(Dataset[torch.Tensor]):
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(self.x[i])


def seed_model(n_features: int) -> Autoencoder:
    """The seed architecture: one member of :class:`Autoencoder`, with ``nn.Dropout``."""
    model = Autoencoder(n_features, members=1)
    net = model.nets[0]
    assert isinstance(net, MirrorAutoencoder)
    for seq in (net.encoder, net.decoder):
        for i, layer in enumerate(seq):
            if isinstance(layer, FastDropout):
                seq[i] = nn.Dropout(layer.p)
    return model


def seed_style_train(model: nn.Module, x: np.ndarray, epochs: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    loader = DataLoader(_RowDataset(x), batch_size=32, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss(reduction="sum")
    losses = []
    wall, cpu = time.perf_counter(), time.process_time()
    model.train()
    for _ in range(epochs):
        total = 0.0
        for xb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), xb)
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / (len(x) * x.shape[1]))
    return {
        "epochs": epochs,
        "batch_size": 32,
        "lr": 1e-3,
        "samples": epochs * len(x),
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "final_loss": losses[-1],
    }


def fast_train(model: nn.Module, x: np.ndarray, cfg: TrainConfig) -> dict[str, Any]:
    cpu = time.process_time()
    res = train_autoencoder(model, x, cfg)
    return {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule,
        "samples": res.samples,
        "wall_s": res.seconds,
        "cpu_s": time.process_time() - cpu,
        "final_loss": res.final_loss,
    }


def quality(model: nn.Module, data: dict[str, np.ndarray], *, detector_scoring: bool = True) -> dict[str, Any]:
    """Detection metrics; ``detector_scoring``: residual-scale-weighted scores as :class:`Detector` does
    (scale from the training rows), else plain per-row MSE."""
    weights = None
    if detector_scoring:
        weights = ResidualScale(count=len(data["train"]), sumsq=residual_sumsq(model, data["train"])).weights
    cal = reconstruction_errors(model, data["calibration"], feature_weights=weights)
    threshold = threshold_from_histogram(error_histogram(cal), QUANTILE)
    ev = reconstruction_errors(model, data["evaluation"], feature_weights=weights)
    m = metrics_from_histograms(ClassHistograms.of(ev, data["evaluation_types"]), threshold)
    keys = ("roc_auc", "pr_auc", "f1", "precision", "recall", "fpr", "threshold")
    return {k: m[k] for k in keys}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput over all repeats; quality as the mean (and per repeat)."""
    samples = sum(r["samples"] for r in runs)
    wall, cpu = sum(r["wall_s"] for r in runs), sum(r["cpu_s"] for r in runs)
    keys = runs[0]["quality"].keys()
    mean = {k: _mean([r["quality"][k] for r in runs]) for k in keys}
    return {
        "epochs": runs[0]["epochs"],
        "batch_size": runs[0]["batch_size"],
        "lr": runs[0]["lr"],
        "lr_schedule": runs[0].get("lr_schedule", "constant"),
        "repeats": len(runs),
        "samples": samples,
        "wall_s": wall,
        "cpu_s": cpu,
        "samples_per_s": samples / wall,
        "cpu_samples_per_s": samples / cpu,
        "quality_mean": mean,
        "quality_mse_mean": {k: _mean([r["quality_mse"][k] for r in runs]) for k in keys},
        "quality_range": {
            k: [min(v), max(v)] if (v := [r["quality"][k] for r in runs if r["quality"][k] is not None]) else None
            for k in keys
        },
        "runs": runs,
    }


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--rows-per-device", type=int, default=20_000)
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed-epochs", type=int, default=3)
    # Picked from a sweep (3 inits each, Detector scoring): batch 256 / lr 4e-3 / cosine / 15 epochs was the
    # cheapest setting whose worst init still beat the seed loop's mean ROC-AUC and F1.
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=TrainConfig.precision)
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="init seeds per loop (quality is noisy)")
    ap.add_argument("--wait", type=float, default=1800, help="seconds to wait for the data modules")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    raw = load_data(args.devices, args.rows_per_device, args.data_seed, args.wait)
    scaler = Scaler.from_stats(FeatureStats.of(raw["train"]))
    data = {k: (scaler.transform(v) if k != "evaluation_types" else v) for k, v in raw.items()}
    n_features = data["train"].shape[1]

    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        precision=args.precision,
        fused=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {"seed": [], "iotad": []}
    for rep in range(args.repeats):
        init_seed = args.init_seed + rep
        torch.manual_seed(init_seed)
        init = Autoencoder(n_features, members=1).state_dict()  # the loops compare on one autoencoder
        seed_m = seed_model(n_features)
        seed_m.load_state_dict(init)
        fast_m = Autoencoder(n_features, members=1)
        fast_m.load_state_dict(init)
        # Alternate the order so drifting background load does not favour one loop.
        order = [("seed", seed_m), ("iotad", fast_m)][:: 1 if rep % 2 == 0 else -1]
        for name, model in order:
            if name == "seed":
                run = seed_style_train(model, data["train"], args.seed_epochs, init_seed)
            else:
                run = fast_train(model, data["train"], replace(cfg, seed=init_seed))
            run["init_seed"] = init_seed
            run["quality"] = quality(model, data)
            run["quality_mse"] = quality(model, data, detector_scoring=False)
            runs[name].append(run)
    seed_run, fast_run = _summary(runs["seed"]), _summary(runs["iotad"])

    result = {
        "benchmark": "train",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "data": {
            "source": "synthetic (iotad.data.synthetic), not Edge-IIoTset",
            "devices": args.devices,
            "rows_per_device": args.rows_per_device,
            "seed": args.data_seed,
            "train_rows": len(data["train"]),
            "calibration_rows": len(data["calibration"]),
            "evaluation_rows": len(data["evaluation"]),
            "evaluation_attack_rows": int(np.sum(data["evaluation_types"] != "Normal")),
            "n_features": n_features,
        },
        "budget": "each loop its own epochs (seed-style: --seed-epochs, iotad: --epochs); same data, init, threads",
        "scoring": "Detector: residual-scale-weighted squared residuals (quality_mean); plain MSE: quality_mse_mean",
        "threads": args.threads,
        "quality_threshold_quantile": QUANTILE,
        "seed_loop": seed_run,
        "iotad_loop": fast_run,
        "ratio": {
            "samples_per_s": fast_run["samples_per_s"] / seed_run["samples_per_s"],
            "cpu_samples_per_s": fast_run["cpu_samples_per_s"] / seed_run["cpu_samples_per_s"],
            "wall_s": fast_run["wall_s"] / seed_run["wall_s"],
            "cpu_s": fast_run["cpu_s"] / seed_run["cpu_s"],
            "quality_at_least_seed": {
                k: fast_run["quality_mean"][k] >= seed_run["quality_mean"][k] for k in ("roc_auc", "pr_auc", "f1")
            },
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")

    rows = [("seed-style (batch 32, DataLoader)", seed_run), ("iotad train_autoencoder", fast_run)]
    print(
        f"torch threads: {args.threads}; train rows: {len(data['train']):,}; data: synthetic; "
        f"{args.repeats} init seeds per loop (time summed, quality averaged; Detector scoring, MSE scoring "
        f"in brackets)\n"
    )
    print("| loop | epochs | batch | lr | wall s | CPU s | samples/s | CPU samples/s | ROC-AUC | PR-AUC | F1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        q, qm = r["quality_mean"], r["quality_mse_mean"]
        print(
            f"| {name} | {r['epochs']} | {r['batch_size']} | {r['lr']:g} {r['lr_schedule']} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {r['samples_per_s']:,.0f} | {r['cpu_samples_per_s']:,.0f} "
            f"| {_fmt(q['roc_auc'])} ({_fmt(qm['roc_auc'])}) | {_fmt(q['pr_auc'])} ({_fmt(qm['pr_auc'])}) "
            f"| {_fmt(q['f1'])} ({_fmt(qm['f1'])}) |"
        )
    rt = result["ratio"]
    ok = all(rt["quality_at_least_seed"].values())
    verdict = (
        "time-to-quality: iotad quality >= seed on ROC-AUC, PR-AUC and F1"
        if ok
        else f"quality NOT >= seed on every metric: {rt['quality_at_least_seed']}"
    )
    print(
        f"\nthroughput ratio: {rt['samples_per_s']:.1f}x (wall), {rt['cpu_samples_per_s']:.1f}x (CPU time); "
        f"time ratio iotad / seed: {rt['wall_s']:.2f} (wall), {rt['cpu_s']:.2f} (CPU) "
        f"({verdict})"
    )
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()
