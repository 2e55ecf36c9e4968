"""The ``iotad`` command line (contract: DESIGN.md section 6).

Each sub-command parses its arguments and calls one function of the package; heavy
modules are imported only by the command that needs them, so ``iotad --help`` and
the small commands start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

err = Console(stderr=True)


def _synth(a: argparse.Namespace) -> None:
    from iotad.data.synthetic import write_synthetic

    paths = write_synthetic(a.out, a.devices, a.rows_per_device, a.seed)
    err.print(f"wrote {len(paths)} devices x {a.rows_per_device} rows of SYNTHETIC traffic to {a.out}")


def _partition(a: argparse.Namespace) -> None:
    from iotad.data.partition import partition_csvs

    paths = partition_csvs(a.csv, a.devices, a.out, alpha=a.alpha, seed=a.seed)
    err.print(f"partitioned {len(a.csv)} file(s) into {len(paths)} devices under {a.out}")


def _centralized(a: argparse.Namespace) -> None:
    from iotad.centralized import run_centralized

    if bool(a.data) == bool(a.train_csv):
        raise UsageError("give either --data DIR or --train-csv F... with --eval-csv F...")
    if a.train_csv and not a.eval_csv:
        raise UsageError("--train-csv needs --eval-csv")
    metrics = run_centralized(
        out=a.out, data=a.data, train_csv=a.train_csv, eval_csv=a.eval_csv,
        epochs=a.epochs, quantile=a.quantile, seed=a.seed,
    )
    _print_summary(metrics, a.out)


def _simulate(a: argparse.Namespace) -> None:
    from iotad.simulation import simulate

    metrics = simulate(
        data=a.data, rounds=a.rounds, out=a.out, devices=a.devices, strategy=a.strategy,
        fraction=a.fraction, local_epochs=a.local_epochs, quantile=a.quantile, seed=a.seed,
    )
    _print_summary(metrics, a.out)


def _evaluate(a: argparse.Namespace) -> None:
    from iotad.centralized import evaluate_csvs

    metrics = evaluate_csvs(a.model, a.csv, a.out)
    _print_summary(metrics, a.out.parent)


def _score(a: argparse.Namespace) -> None:
    from iotad.centralized import score_csv

    n, flagged = score_csv(a.model, a.csv, a.out)
    err.print(f"scored {n} rows, {flagged} flagged as anomalies -> {a.out}")


def _compare(a: argparse.Namespace) -> None:
    from iotad.report import compare

    path = compare(a.runs, a.out)
    err.print(f"report: {path}")


def _local_federation(a: argparse.Namespace) -> None:
    from iotad.deploy.federation import run_local_federation

    run_local_federation(a.workdir, devices=a.devices, rounds=a.rounds, rows_per_device=a.rows_per_device)


class UsageError(Exception):
    """Bad combination of arguments."""


def _print_summary(metrics: dict, out: Path) -> None:
    keys = ("precision", "recall", "f1", "fpr", "roc_auc", "pr_auc", "threshold")
    err.print("  ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float)))
    err.print(f"results in {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotad", description="Federated anomaly detection for IoT edge devices.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic traffic in the Edge-IIoTset raw schema")
    s.add_argument("--devices", type=int, required=True)
    s.add_argument("--rows-per-device", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_synth)

    s = sub.add_parser("partition", help="split real Edge-IIoTset CSVs into per-device folders")
    s.add_argument("--csv", type=Path, nargs="+", required=True)
    s.add_argument("--devices", type=int, required=True)
    s.add_argument("--alpha", type=float, default=None, help="Dirichlet alpha over attack types (default IID)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_partition)

    s = sub.add_parser("centralized", help="train and evaluate the centralised baseline")
    s.add_argument("--data", type=Path, help="per-device folders (from synth or partition)")
    s.add_argument("--train-csv", type=Path, nargs="+", help="CSV(s) whose normal rows train the model")
    s.add_argument("--eval-csv", type=Path, nargs="+", help="labelled CSV(s) to evaluate on")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--quantile", type=float, default=0.99)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_centralized)

    s = sub.add_parser("simulate", help="federated training in the Flower simulation engine")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--rounds", type=int, required=True)
    s.add_argument("--devices", type=int, default=None, help="default: every device folder in --data")
    s.add_argument("--strategy", default="fedavg")
    s.add_argument("--fraction", type=float, default=1.0, help="fraction of devices sampled per round")
    s.add_argument("--local-epochs", type=int, default=2)
    s.add_argument("--quantile", type=float, default=0.99)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_simulate)

    s = sub.add_parser("evaluate", help="metrics of a trained model on labelled CSVs")
    s.add_argument("--model", type=Path, required=True, help="a run folder or a model bundle")
    s.add_argument("--csv", type=Path, nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("score", help="score every row of a CSV: anomaly score and 0/1 flag")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--csv", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_score)

    s = sub.add_parser("compare", help="report comparing runs (centralised vs federated)")
    s.add_argument("--runs", type=Path, nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_compare)

    s = sub.add_parser("local-federation", help="SuperLink + SuperNodes + agents on 127.0.0.1 with TLS")
    s.add_argument("--devices", type=int, default=3)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--rows-per-device", type=int, default=4000)
    s.add_argument("--workdir", type=Path, required=True)
    s.set_defaults(func=_local_federation)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from iotad.data.loader import SchemaError

    try:
        args.func(args)
    except (SchemaError, UsageError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        err.print(f"[red]iotad {args.command}: error:[/red] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


def dump_json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
