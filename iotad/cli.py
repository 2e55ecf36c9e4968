"""The ``iotad`` command line (contract: DESIGN.md section 6).

Each sub-command parses its arguments and calls one function of the package; heavy
modules are imported only by the command that needs them, so ``iotad --help`` and
the small commands start fast.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from iotad.telemetry.logs import configure as configure_logging

if TYPE_CHECKING:
    from iotad.telemetry.exporter import MetricsTLS

err = Console(stderr=True)
SERVICES = ("aggregator", "device", "agent", "local-federation")  # long-lived: they log their INFO events


def _synth(a: argparse.Namespace) -> None:
    from iotad.data.synthetic import write_synthetic

    paths = write_synthetic(a.out, a.devices, a.rows_per_device, a.seed)
    if a.story:
        from iotad.data.synthetic.story import write_story_captures

        write_story_captures(a.out, a.devices, a.rows_per_device, a.seed)
    err.print(f"wrote {len(paths)} devices x {a.rows_per_device} rows of SYNTHETIC traffic to {a.out}")


def _partition(a: argparse.Namespace) -> None:
    from iotad.data.partition import partition_csvs

    paths = partition_csvs(a.csv, a.devices, a.out, alpha=a.alpha, seed=a.seed)
    err.print(f"partitioned {len(a.csv)} file(s) into {len(paths)} devices under {a.out}")


def _centralized(a: argparse.Namespace) -> None:
    from iotad.core.centralized import run_centralized

    if bool(a.data) == bool(a.train_csv):
        raise UsageError("give either --data DIR or --train-csv F... with --eval-csv F...")
    if a.train_csv and not a.eval_csv:
        raise UsageError("--train-csv needs --eval-csv")
    metrics = run_centralized(
        out=a.out, data=a.data, train_csv=a.train_csv, eval_csv=a.eval_csv,
        epochs=a.epochs, quantile=a.quantile, seed=a.seed, members=a.members, split_seed=a.split_seed,
        feature_set=a.features, normalisation=a.normalisation,
    )
    _print_summary(metrics, a.out)


def require_extra(command: str, module: str, extra: str) -> None:
    """A clear usage error naming the install command when an optional extra is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"`iotad {command}` needs the {extra!r} extra ({module} is not installed): "
                         f"pip install 'iotad[{extra}]' (scripts/setup.sh installs every extra)")


def _simulate(a: argparse.Namespace) -> None:
    require_extra("simulate", "ray", "simulation")  # Flower's simulation engine runs on Ray
    from iotad.fl.simulation import simulate

    metrics = simulate(
        data=a.data, rounds=a.rounds, out=a.out, devices=a.devices, strategy=a.strategy,
        fraction=a.fraction, local_epochs=a.local_epochs, quantile=a.quantile, seed=a.seed, members=a.members,
        split_seed=a.split_seed, feature_set=a.features, normalisation=a.normalisation,
    )
    _print_summary(metrics, a.out)


def _evaluate(a: argparse.Namespace) -> None:
    from iotad.core.centralized import evaluate_csvs

    metrics = evaluate_csvs(a.model, a.csv, a.out)
    _print_summary(metrics, a.out.parent)


def _score(a: argparse.Namespace) -> None:
    from iotad.core.centralized import score_csv

    r = score_csv(a.model, a.csv, a.out)
    why = "".join(f", {reason} {count}" for reason, count in r.rejected.items())
    notes = "".join(f"; kept with {note} {count}" for note, count in r.label_notes.items())
    err.print(f"scored {r.scored} of {r.read} rows, {r.flagged} flagged as anomalies -> {a.out}; "
              f"rejected {r.read - r.scored}{why}{notes}")


def _compare(a: argparse.Namespace) -> None:
    require_extra("compare", "matplotlib", "report")
    from iotad.core.report import compare

    path = compare(a.runs, a.out)
    err.print(f"report: {path}")


def _story(a: argparse.Namespace) -> None:
    require_extra("story", "matplotlib", "report")
    from iotad.core.story import write_story

    path = write_story(a.run, a.data, a.out, episodes=a.episodes, rate=a.rate)
    err.print(f"story: {path}")


def _local_federation(a: argparse.Namespace) -> None:
    from iotad.deploy.local_stack import run_local_federation

    run_local_federation(
        a.workdir, devices=a.devices, rounds=a.rounds, rows_per_device=a.rows_per_device,
        keep_running=a.keep_running, resume=a.resume, local_epochs=a.local_epochs, rate=a.rate, seed=a.seed,
        agent_args=shlex.split(a.agent_args or ""),
    )


def _agent(a: argparse.Namespace) -> None:
    from iotad.edge.capture import CaptureError
    from iotad.edge.run import AgentOptions, run_agent

    if not a.device:
        raise UsageError("--device (or $IOTAD_DEVICE) is required")
    if not a.model_dir:
        raise UsageError("--model-dir (or $IOTAD_MODEL_DIR) is required")
    opts = AgentOptions(
        device=a.device, model_dir=Path(a.model_dir), replay=a.replay, tail=a.tail, capture=a.capture,
        capture_filter=a.capture_filter, decode_as=tuple(a.decode_as),
        metrics_dir=a.metrics_dir, metrics_port=a.metrics_port, metrics_host=a.metrics_host, rate=a.rate,
        batch_size=a.batch_size, only_attacks=a.only_attacks, only_normal=a.only_normal, burst_rows=a.burst_rows,
        burst_every=a.burst_every, from_start=a.from_start, poll_interval=a.poll, threads=a.threads,
        metrics_tls=_metrics_tls(a),
    )
    try:
        code = run_agent(opts)
    except CaptureError as e:
        raise UsageError(str(e)) from e
    if code:
        sys.exit(code)


def _add_capture_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--capture-filter", default="", help="capture: a BPF filter, e.g. \"not port 9092\"")
    s.add_argument("--decode-as", action="append", default=[], metavar="RULE",
                   help="capture: a tshark -d rule, e.g. tcp.port==11883,mqtt (repeatable)")


def _capture(a: argparse.Namespace) -> None:
    from iotad.edge.capture import CaptureError, write_capture

    try:
        n, shed = write_capture(a.interface, a.out, count=a.count, seconds=a.seconds,
                                capture_filter=a.capture_filter, decode_as=a.decode_as)
    except CaptureError as e:
        raise UsageError(str(e)) from e
    where = f" to {a.out}" if a.out else ""
    err.print(f"{n} rows from {a.interface}{where}" + (f"; {shed} dropped" if shed else ""))


def _metrics_tls(a: argparse.Namespace) -> MetricsTLS | None:
    from iotad.telemetry.exporter import MetricsTLS

    return MetricsTLS.from_values(a.metrics_tls_cert, a.metrics_tls_key, a.metrics_client_ca)


def _add_metrics_tls(s: argparse.ArgumentParser) -> None:
    from iotad.telemetry.exporter import TLS_CERT_ENV, TLS_CLIENT_CA_ENV, TLS_KEY_ENV

    s.add_argument("--metrics-tls-cert", default=_env(TLS_CERT_ENV),
                   help=f"serve /metrics over HTTPS with this certificate (${TLS_CERT_ENV})")
    s.add_argument("--metrics-tls-key", default=_env(TLS_KEY_ENV), help=f"its private key (${TLS_KEY_ENV})")
    s.add_argument("--metrics-client-ca", default=_env(TLS_CLIENT_CA_ENV),
                   help=f"scrapers must present a client certificate this CA signed (${TLS_CLIENT_CA_ENV})")


def _retrain(a: argparse.Namespace) -> None:
    import json

    from iotad.deploy.status import RETRAIN_REQUEST

    status_path = a.state_dir / "aggregator-status.json"
    if not status_path.is_file():
        raise UsageError(f"{a.state_dir} is not an aggregator's state dir (no aggregator-status.json)")
    (a.state_dir / RETRAIN_REQUEST).write_text(f"requested at {time.time():.0f}\n")
    state = json.loads(status_path.read_text()).get("state", "?")
    when = "within seconds" if state in ("completed", "failed") else f"when the current training ends ({state})"
    err.print(f"retrain requested: the aggregator moves the checkpoints to checkpoints.previous and trains "
              f"again {when}; follow it with `docker compose logs -f aggregator`")


def _aggregator(a: argparse.Namespace) -> None:
    from iotad.deploy.aggregator import run_aggregator

    run_config = {}
    if a.run_config:
        from flwr.common.config import parse_config_args

        run_config = dict(parse_config_args([a.run_config]))
    code = run_aggregator(
        state_dir=a.state_dir, certs_dir=a.certs_dir, keys_dir=a.keys_dir, rounds=a.rounds,
        min_nodes=a.min_nodes, app_dir=a.app_dir, fleet_address=a.fleet_address, control_port=a.control_port,
        metrics_port=a.metrics_port, metrics_host=a.metrics_host, metrics_tls=_metrics_tls(a),
        run_config={"local-epochs": a.local_epochs, **run_config}, join_timeout=a.join_timeout,
        run_timeout=a.run_timeout or None, max_attempts=a.max_attempts, exit_after_training=a.exit_after_training,
    )
    if code:
        sys.exit(code)


def _device(a: argparse.Namespace) -> None:
    from iotad.deploy.device import DeviceOptions, run_device

    agent_args = shlex.split(a.agent_args or "")
    if a.tail:
        agent_args += ["--tail", str(a.tail)]
    agent_args += ["--rate", str(a.rate)]
    code = run_device(DeviceOptions(
        state_dir=a.state_dir, device_name=a.device_name, superlink=a.superlink,
        root_certificates=a.root_certificates, private_key=a.private_key, data_path=a.data_path,
        supernode_host=a.supernode_host, supernode_port=a.supernode_port, metrics_host=a.metrics_host,
        metrics_port=a.metrics_port, max_retries=a.max_retries, log_dir=a.log_dir, agent_args=agent_args,
        replay_path=a.replay_path, verbose=a.verbose,
    ))
    if code:
        sys.exit(code)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


class UsageError(Exception):
    """Bad combination of arguments."""


def _print_summary(metrics: dict, out: Path) -> None:
    keys = ("precision", "recall", "f1", "fpr", "roc_auc", "pr_auc", "threshold")
    err.print("  ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float)))
    err.print(f"results in {out}")


def _detector_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--features", choices=("window", "packet"), default="window",
                   help="per-packet encoding plus window statistics (default), or the per-packet encoding alone")
    s.add_argument("--normalisation", choices=("local", "global"), default="local",
                   help="scaler and score scale per device (default) or merged over the fleet")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotad", description="Federated anomaly detection for IoT edge devices.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="log lines as text (default) or one JSON object per line (default: $IOTAD_LOG_FORMAT)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic traffic in the Edge-IIoTset raw schema")
    s.add_argument("--devices", type=int, required=True)
    s.add_argument("--rows-per-device", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--story", action="store_true",
                   help="also device-<k>/story.csv: a new capture with a few attack bursts, for the replay")
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
    s.add_argument("--epochs", type=int, default=20, help="training epochs over the pooled rows")
    s.add_argument("--quantile", type=float, default=0.99)
    s.add_argument("--seed", type=int, default=0, help="initial weights and shuffling")
    s.add_argument("--split-seed", type=int, default=None, help="train/calibration/evaluation split (default: --seed)")
    s.add_argument("--members", type=int, default=4, help="autoencoders in the ensemble")
    _detector_options(s)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_centralized)

    s = sub.add_parser("simulate", help="federated training in the Flower simulation engine")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--rounds", type=int, required=True)
    s.add_argument("--devices", type=int, default=None, help="default: every device folder in --data")
    s.add_argument("--strategy", default="fedavg")
    s.add_argument("--fraction", type=float, default=1.0, help="fraction of devices sampled per round")
    s.add_argument("--local-epochs", type=int, default=2,
                   help="per round; short local runs between averages keep the devices' models close")
    s.add_argument("--quantile", type=float, default=0.99)
    s.add_argument("--seed", type=int, default=0, help="initial weights and shuffling")
    s.add_argument("--split-seed", type=int, default=None, help="train/calibration/evaluation split (default: --seed)")
    s.add_argument("--members", type=int, default=4, help="autoencoders in the ensemble")
    _detector_options(s)
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
    s.add_argument("--keep-running", action="store_true", help="keep detecting and serving metrics after training")
    s.add_argument("--resume", action="store_true", help="keep checkpoints and SuperLink state of a previous run")
    s.add_argument("--local-epochs", type=int, default=1)
    s.add_argument("--rate", type=float, default=100.0, help="rows/s each agent replays")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--agent-args", default="",
                   help='more `iotad agent` options, e.g. "--only-normal --burst-rows 2000 --burst-every 120"')
    s.set_defaults(func=_local_federation)

    s = sub.add_parser("agent", help="device agent: /metrics, hot-reloaded global model, continuous scoring")
    s.add_argument("--device", default=_env("IOTAD_DEVICE"), help="device label (default $IOTAD_DEVICE)")
    s.add_argument("--model-dir", default=_env("IOTAD_MODEL_DIR"), help="global bundle dir ($IOTAD_MODEL_DIR)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--replay", type=Path, help="labelled traffic CSV (or device folder) to replay, looping")
    src.add_argument("--tail", type=Path, help="CSV another process appends to (followed like tail -F)")
    src.add_argument("--capture", metavar="INTERFACE", help="this network interface, live (needs tshark)")
    _add_capture_options(s)
    s.add_argument("--metrics-dir", type=Path, default=None,
                   help="PROMETHEUS_MULTIPROC_DIR shared with the ClientApps (default: the variable)")
    s.add_argument("--metrics-port", type=int, default=9401)
    s.add_argument("--metrics-host", default="127.0.0.1")
    s.add_argument("--rate", type=float, default=100.0, help="replay rows/s (0: as fast as possible)")
    s.add_argument("--batch-size", type=int, default=256)
    only = s.add_mutually_exclusive_group()
    only.add_argument("--only-attacks", action="store_true", help="replay only attack rows")
    only.add_argument("--only-normal", action="store_true",
                      help="replay all but the attack rows (a quiet baseline for --burst-rows)")
    s.add_argument("--burst-rows", type=int, default=0, help="attack rows per burst (also on SIGUSR1)")
    s.add_argument("--burst-every", type=float, default=0.0, help="seconds between bursts (0: only on SIGUSR1)")
    s.add_argument("--from-start", action="store_true", help="tail: score the rows already in the file")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between model-bundle checks")
    s.add_argument("--threads", type=int, default=1, help="BLAS threads for scoring (numpy)")
    _add_metrics_tls(s)
    s.set_defaults(func=_agent)

    s = sub.add_parser("capture", help="write an interface's packets as Edge-IIoTset CSV rows (tshark)")
    s.add_argument("--interface", required=True, help="network interface, e.g. eth0 (tshark -D lists them)")
    s.add_argument("--out", type=Path, default=None, help="CSV file to write (default: standard output)")
    s.add_argument("--count", type=int, default=0, help="stop after this many rows (0: until interrupted)")
    s.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until interrupted)")
    _add_capture_options(s)
    s.set_defaults(func=_capture)

    s = sub.add_parser("aggregator", help="aggregator: SuperLink (TLS, node auth), run supervision, /metrics")
    s.add_argument("--state-dir", type=Path, default=Path(_env("IOTAD_STATE_DIR", "/var/lib/iotad") or ""))
    s.add_argument("--certs-dir", type=Path, required=True, help="ca.crt, server.pem, server.key")
    s.add_argument("--keys-dir", type=Path, required=True, help="device public keys: <name>/node_key.pub")
    s.add_argument("--app-dir", type=Path, default=None, help="Flower app (pyproject.toml + iotad/)")
    s.add_argument("--fleet-address", default="0.0.0.0:9092", help="Fleet API (gRPC + TLS) bind address")
    s.add_argument("--control-port", type=int, default=9093, help="Control API port (always 127.0.0.1)")
    s.add_argument("--metrics-port", type=int, default=9400)
    s.add_argument("--metrics-host", default="0.0.0.0")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--min-nodes", type=int, default=2)
    s.add_argument("--local-epochs", type=int, default=2)
    s.add_argument("--run-config", default="", help='more run-config overrides: "key=value key2=\'s\'"')
    s.add_argument("--join-timeout", type=float, default=600.0, help="seconds to wait for --min-nodes devices")
    s.add_argument("--run-timeout", type=float, default=7200.0, help="seconds per run attempt (0: none)")
    s.add_argument("--max-attempts", type=int, default=5)
    s.add_argument("--exit-after-training", action="store_true")
    _add_metrics_tls(s)
    s.set_defaults(func=_aggregator)

    s = sub.add_parser("story", help="detection timeline per device: held-out synthetic traffic with attack bursts")
    s.add_argument("--run", type=Path, required=True, help="a run with device bundles (RUN/devices/device-<k>/model)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True, help="the synthetic data the run trained on (iotad synth)")
    s.add_argument("--episodes", type=int, default=3, help="attack families kept as bursts")
    s.add_argument("--rate", type=float, default=10.0, help="replay rate (rows/s) for the time axis")
    s.set_defaults(func=_story)

    s = sub.add_parser("retrain", help="ask the running aggregator to train again from scratch")
    s.add_argument("--state-dir", type=Path, default=Path(_env("IOTAD_STATE_DIR", "/var/lib/iotad") or ""),
                   help="the aggregator's state dir (default $IOTAD_STATE_DIR or /var/lib/iotad)")
    s.set_defaults(func=_retrain)

    s = sub.add_parser("device", help="device: SuperNode + agent in one supervised group")
    s.add_argument("--state-dir", type=Path, default=Path(_env("IOTAD_STATE_DIR", "/var/lib/iotad") or ""))
    s.add_argument("--device-name", required=True)
    s.add_argument("--superlink", required=True, help="aggregator Fleet API HOST:PORT")
    s.add_argument("--root-certificates", type=Path, required=True, help="the federation CA (ca.crt)")
    s.add_argument("--private-key", type=Path, required=True, help="this device's node_key (OpenSSH)")
    s.add_argument("--data-path", type=Path, required=True, help="the device's traffic CSV")
    s.add_argument("--supernode-host", default="127.0.0.1")
    s.add_argument("--supernode-port", type=int, default=9094)
    s.add_argument("--metrics-host", default="0.0.0.0")
    s.add_argument("--metrics-port", type=int, default=9401)
    s.add_argument("--max-retries", type=int, default=None, help="SuperNode connection retries (default: forever)")
    s.add_argument("--log-dir", default=None, help="child logs (default STATE/logs; '-': stdout)")
    s.add_argument("--tail", type=Path, default=None, help="score this live CSV instead of replaying --data-path")
    s.add_argument("--replay-path", type=Path, default=None,
                   help="replay this labelled CSV instead of --data-path (e.g. the synthetic story.csv)")
    s.add_argument("--rate", type=float, default=100.0, help="replay rows/s")
    s.add_argument("--agent-args", default="", help="more `iotad agent` options, one string")
    s.set_defaults(func=_device)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from iotad.data.schema import SchemaError  # pure module: no pandas for a command that needs none

    try:
        configure_logging(args.verbose, args.log_format, service=args.command in SERVICES,
                          device=getattr(args, "device_name", None) or getattr(args, "device", None) or None)
        args.func(args)
    except (SchemaError, UsageError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        err.print(f"[red]iotad {args.command}: error:[/red] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
