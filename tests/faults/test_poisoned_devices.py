"""Fault matrix, hostile peers: one poisoned device of five in the Flower simulation (small and bounded;
bench/bench_poisoning.py measures the full table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.bench_poisoning import HOSTILE, SCREENED, honest_metrics
from bench.hostile_devices import STRATEGY_CONFIG, hostile_app
from iotad.data.synthetic import write_synthetic
from iotad.fl.simulation import simulate

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ROUNDS = 2
HONEST = [f"device-{k}" for k in range(4)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("poison")
    write_synthetic(root / "D", 5, 900, seed=7)
    return root / "D"


def _run(data: Path, out: Path, strategy: str, poison: str | None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    simulate(data, ROUNDS, out, local_epochs=1, members=1, extra_config=dict(STRATEGY_CONFIG[strategy]),
             client_app=None if poison is None else hostile_app(poison, HOSTILE))
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    return history, honest_metrics(out, data, 0, HONEST)


@pytest.mark.parametrize("poison", SCREENED)
def test_unusable_updates_are_screened_out_and_counted(data: Path, tmp_path: Path, poison: str) -> None:
    history, _ = _run(data, tmp_path / "R", "fedavg", poison)
    reason = {"nan weights": "non_finite", "inf weights": "non_finite", "wrong shapes": "shape"}[poison]
    assert [r["rejected_updates"] for r in history] == [{reason: 1}] * ROUNDS
    assert [(r["devices_participating"], r["devices_failed"]) for r in history] == [(4, 1)] * ROUNDS


def test_a_median_bounds_a_scaled_update_that_fedavg_takes(data: Path, tmp_path: Path) -> None:
    _, clean = _run(data, tmp_path / "clean", "fedmedian", None)
    history, median = _run(data, tmp_path / "median", "fedmedian", "x100 scaled update")
    _, mean = _run(data, tmp_path / "mean", "fedavg", "x100 scaled update")
    print(f"\nF1 on devices 0-3: median clean {clean['f1']:.4f}, median x100 {median['f1']:.4f}, "
          f"fedavg x100 {mean['f1']:.4f}")
    assert all(r["rejected_updates"] == {} for r in history)  # finite and well-shaped: not the screen's job
    assert abs(median["f1"] - clean["f1"]) <= 0.02
    assert mean["f1"] < median["f1"] - 0.05  # what robustness is worth
