"""Aggregator launcher: SuperLink + run supervision + the federation's ``/metrics``.

One long-lived process per aggregator (container entrypoint ``iotad aggregator``):

1. serves ``/metrics`` from a multiprocess directory that the ServerApp writes too (the SuperLink,
   its ``flower-superexec`` and every ``flwr-serverapp`` inherit ``PROMETHEUS_MULTIPROC_DIR``);
2. starts ``flower-superlink`` with TLS, SuperNode authentication and a state database, the Control
   API on 127.0.0.1 only;
3. registers the device public keys it is given (``<keys-dir>/<name>/node_key.pub``);
4. waits (bounded) for enough devices, submits the run (``checkpoint-dir``, ``resume=true``);
5. supervises: a SuperLink that dies is restarted on the same ports and database, the devices rejoin
   by themselves and the run is resubmitted; the ServerApp resumes from the last checkpoint with the
   remaining rounds (``iotad_fl_resumed_runs_total{reason=...}``);
6. keeps serving (and keeps the SuperLink alive) after training until SIGTERM.

:func:`iotad.deploy.local_stack.run_local_stack` builds the whole federation on 127.0.0.1 around it
(``iotad local-federation``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from iotad.deploy.federation import PROJECT_ROOT, LocalFederation
from iotad.deploy.processes import DeployError, sigterm_as_keyboard_interrupt
from iotad.deploy.runs import RunResult
from iotad.deploy.status import RETRAIN_REQUEST, AggregatorStatus, Attempt, latest_round
from iotad.telemetry.exporter import (
    MULTIPROC_ENV,
    MetricsServer,
    MetricsTLS,
    configure_multiprocess,
    prepare_multiproc_dir,
    serve_metrics,
)
from iotad.telemetry.federation import (
    RESUME_LAUNCHER_RESTART,
    RESUME_RUN_FAILED,
    RESUME_SUPERLINK_RESTART,
    AggregatorTelemetry,
)

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9400
DEFAULT_FLEET_PORT = 9092
DEFAULT_CONTROL_PORT = 9093
DELIVERY_TIMEOUT = 900.0  # s for one model delivery run (a device that left meanwhile must not block it)


class Aggregator:
    """Drives a :class:`LocalFederation` (SuperLink side only, or with local devices) as a service.

    Parameters
    ----------
    fed
        The federation tooling; its SuperLink is started here.
    rounds
        Planned rounds (``num-server-rounds``).
    checkpoint_dir
        Run-config ``checkpoint-dir``: where the ServerApp checkpoints and resumes from.
    run_config
        Further run-config keys (must exist in ``[tool.flwr.app.config]``).
    min_nodes
        Devices to wait for before submitting (and the ServerApp's ``min-nodes``).
    multiproc_dir
        ``PROMETHEUS_MULTIPROC_DIR`` of the launcher and the ServerApp (wiped at start).
    """

    def __init__(
        self,
        fed: LocalFederation,
        *,
        rounds: int,
        checkpoint_dir: Path,
        multiproc_dir: Path,
        run_config: Mapping[str, Any] | None = None,
        min_nodes: int = 2,
        metrics_port: int = DEFAULT_METRICS_PORT,
        metrics_host: str = "127.0.0.1",
        metrics_tls: MetricsTLS | None = None,
        join_timeout: float = 600.0,
        run_timeout: float | None = 7200.0,
        max_attempts: int = 5,
        status_path: Path | None = None,
        deliver_every: float = 15.0,
    ) -> None:
        self.fed = fed
        self.rounds = int(rounds)
        self.checkpoint_dir = Path(checkpoint_dir).resolve()
        self.multiproc_dir = Path(multiproc_dir).resolve()
        self.extra_config = dict(run_config or {})
        self.min_nodes = int(min_nodes)
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_tls = metrics_tls
        self.join_timeout = join_timeout
        self.run_timeout = run_timeout
        self.max_attempts = max_attempts
        self.status_path = status_path or fed.workdir / "aggregator-status.json"
        self.status = AggregatorStatus(rounds=self.rounds)
        self.server: MetricsServer | None = None
        self.telemetry: AggregatorTelemetry | None = None
        self.holders: set[str] = set()  # node ids known to hold the current model
        self.delivery_failures = 0
        self.deliver_every = deliver_every
        fed.min_online = self.min_nodes
        # Every child (SuperLink -> superexec -> flwr-serverapp) inherits the directory.
        fed.registry.env[MULTIPROC_ENV] = str(self.multiproc_dir)

    # --- lifecycle --------------------------------------------------------------------------------

    def start_metrics(self) -> MetricsServer:
        """Wipe the multiprocess directory, switch this process to it, serve ``/metrics``."""
        prepare_multiproc_dir(self.multiproc_dir, wipe=True)
        configure_multiprocess(self.multiproc_dir)
        self.server = serve_metrics(self.metrics_port, self.metrics_host, tls=self.metrics_tls)
        self.status.metrics_url = self.server.url
        self.telemetry = AggregatorTelemetry()
        self._republish_history()
        return self.server

    def _republish_history(self) -> None:
        """After a reboot the directory is empty: publish the checkpointed rounds once, so counters
        count every completed round and gauges show the last one."""
        from iotad.fl.checkpoint import CheckpointStore

        assert self.telemetry is not None
        history = CheckpointStore(self.checkpoint_dir).history()
        for rec in history:
            failed = rec.failures()
            self.telemetry.round_started(rec.round)
            self.telemetry.round_finished(
                seconds=rec.duration_seconds, participating=rec.devices_participating, failed=failed,
                train_loss=rec.train_loss, model_bytes=rec.model_bytes,
            )
            self.telemetry.evaluated(rec.metrics)
        self.status.completed_rounds = len(history)

    def start(self) -> None:
        """Metrics, TLS material check/generation, SuperLink, device registrations."""
        if self.server is None:
            self.start_metrics()
        self.fed.prepare_certs()
        self.fed.start_superlink()
        self.register_devices()
        self._write_status()

    def register_devices(self) -> list[str]:
        """Register every device key known (``keys_dir`` is re-scanned: new devices can be added)."""
        if self.fed.keys_dir is not None and self.fed.keys_dir.is_dir():
            for key in sorted(self.fed.keys_dir.glob("*/node_key.pub")):
                name = key.parent.name
                if name not in self.fed.devices:
                    self.fed.add_device(name)
        new = [n for n, d in self.fed.devices.items() if d.node_id is None]
        if new:
            self.fed.register_devices(new)
            log.info("device keys registered (or already known): %s", ", ".join(new))
        return new

    def _superlink_alive(self) -> bool:
        return self.fed.superlink is not None and self.fed.superlink.alive()

    def ensure_superlink(self) -> bool:
        """Restart a dead SuperLink, or one whose SuperExec died (same ports and database); True if it had to."""
        self.fed.stop_superlink_without_superexec()
        if self._superlink_alive():
            return False
        log.warning("SuperLink is down; restarting it")
        self.fed.start_superlink()
        self._write_status()
        return True

    # --- the run ----------------------------------------------------------------------------------

    def run_config(self) -> dict[str, Any]:
        return {
            **self.extra_config,
            "num-server-rounds": self.rounds,
            "checkpoint-dir": str(self.checkpoint_dir),
            "resume": True,
            "min-nodes": self.min_nodes,
        }

    def _next_config(self, previous: RunResult | None) -> dict[str, Any] | None:
        assert self.telemetry is not None
        done = latest_round(self.checkpoint_dir)
        if previous is not None:
            self._close_attempt(previous)
            self.telemetry.run_finished()
        if done >= self.rounds or (previous is not None and previous.succeeded):
            return None
        if previous is None:
            reason = RESUME_LAUNCHER_RESTART if done > 0 else None
        else:
            reason = RESUME_RUN_FAILED if self._superlink_alive() else RESUME_SUPERLINK_RESTART
            log.warning("run %s ended %s (%s); resubmitting from round %d", previous.run_id, previous.status,
                        previous.details, done)
        self.telemetry.run_started(planned_rounds=self.rounds, resumed_reason=reason)
        self.status.attempts.append(Attempt(len(self.status.attempts) + 1, done, reason, time.time()))
        self.status.state = "training"
        self._write_status()
        return self.run_config()

    def _close_attempt(self, result: RunResult) -> None:
        if self.status.attempts:
            att = self.status.attempts[-1]
            att.run_id, att.status, att.details, att.seconds = result.run_id, result.status, result.details, \
                result.seconds

    def take_retrain_request(self) -> bool:
        """An ``iotad retrain`` request: the checkpoints move to ``checkpoints.previous`` (replacing an
        older one), so that the next :meth:`train` starts from scratch. True if there was one."""
        request = self.fed.workdir / RETRAIN_REQUEST
        if not request.exists():
            return False
        previous = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".previous")
        if self.checkpoint_dir.exists():
            shutil.rmtree(previous, ignore_errors=True)
            self.checkpoint_dir.rename(previous)
        request.unlink(missing_ok=True)
        self.holders.clear()
        self.status.completed_rounds = 0
        log.info("retrain requested: the previous checkpoints are in %s; training %d rounds from scratch",
                 previous, self.rounds)
        return True

    def train(self) -> list[RunResult]:
        """Wait for devices, submit, resubmit while the run is lost; returns every attempt's result."""
        assert self.telemetry is not None
        self.take_retrain_request()
        if latest_round(self.checkpoint_dir) >= self.rounds:
            log.info("checkpoint already at round %d of %d: nothing to train", self.rounds, self.rounds)
            self.status.state = "completed"
            self._write_status()
            return []
        self.status.state = "waiting"
        self._write_status()
        self.ensure_superlink()
        self.fed.wait_online(self.min_nodes, timeout=self.join_timeout)
        with RoundLog(self.checkpoint_dir, self.rounds):
            results = self.fed.run_supervised(self._next_config, timeout=self.run_timeout,
                                              max_attempts=self.max_attempts)
        if results:
            self._close_attempt(results[-1])
        self.telemetry.run_finished()
        self.status.completed_rounds = latest_round(self.checkpoint_dir)
        self.status.state = "completed" if self.status.completed_rounds >= self.rounds else "failed"
        if self.status.state == "completed":
            self.holders = self.online_nodes()  # the last round's evaluate handed them the model
            self.status.model_holders = len(self.holders)
        self._write_status()
        return results

    # --- after training ---------------------------------------------------------------------------

    def online_nodes(self) -> set[str]:
        """Node ids the SuperLink reports online (empty while it does not answer)."""
        try:
            return {str(n["node-id"]) for n in self.fed.nodes() if n.get("status") == "online"}
        except (DeployError, OSError, subprocess.SubprocessError) as exc:  # e.g. `flwr` timed out
            log.debug("cannot list the SuperNodes: %s", exc)
            return set()

    def deliver(self) -> bool:
        """Hand the trained model to online devices that do not hold it yet (late joiners; every device
        after an aggregator restart): one ``distribute`` run to all online devices. True if it ran."""
        if self.status.state != "completed":
            return False
        self.register_devices()  # keys that init added for new devices since the start
        online = self.online_nodes()
        new = online - self.holders
        if not new:
            return False
        log.info("delivering the round %d model to %d device(s) without it (%d online)",
                 latest_round(self.checkpoint_dir), len(new), len(online))
        # The ServerApp's own wait for replies ends well before ours: a device that left meanwhile
        # fails the delivery to it, not the whole run.
        result = self.fed.submit({**self.run_config(), "distribute": True, "min-nodes": len(online),
                                  "round-timeout": DELIVERY_TIMEOUT / 3}).wait(DELIVERY_TIMEOUT)
        if result.succeeded:
            self.holders |= online
            self.status.model_holders = len(self.holders)
            self._write_status()
            self.delivery_failures = 0
        else:
            self.delivery_failures += 1
            log.warning("model delivery run %s ended %s (%s); trying again in %.0f s", result.run_id,
                        result.status, result.details, self.delivery_backoff())
        return True

    def delivery_backoff(self) -> float:
        """Seconds to the next delivery check: the period, doubled per failed delivery up to 10 min."""
        return min(self.deliver_every * 2.0 ** self.delivery_failures, 600.0)

    def serve_forever(self, poll: float = 2.0) -> None:
        """Keep ``/metrics`` and the SuperLink up until interrupted (KeyboardInterrupt / SIGTERM); deliver
        the model to devices that join later, and train again when ``iotad retrain`` asks."""
        next_delivery, retraining = 0.0, False
        while True:
            try:
                self.ensure_superlink()
                # A retrain that failed (devices missing, run lost) is tried again, resuming its checkpoints.
                if retraining or (self.fed.workdir / RETRAIN_REQUEST).exists():
                    retraining = True
                    if time.monotonic() >= next_delivery:
                        self.train()
                        retraining = self.status.state != "completed"
                        self.delivery_failures = self.delivery_failures + 1 if retraining else 0
                        next_delivery = time.monotonic() + (self.delivery_backoff() if retraining
                                                            else self.deliver_every)
                elif time.monotonic() >= next_delivery:  # one `flwr supernode list` (~1 s of CPU) per period
                    self.deliver()
                    next_delivery = time.monotonic() + self.delivery_backoff()
            except (DeployError, OSError, subprocess.SubprocessError, RuntimeError) as exc:
                # A trained aggregator keeps serving (metrics, SuperLink, the devices' model) through a
                # failed retrain or delivery; the next period tries again.
                self.delivery_failures += 1
                next_delivery = time.monotonic() + self.delivery_backoff()
                log.error("after training: %s; trying again in %.0f s", exc, self.delivery_backoff())
            time.sleep(poll)

    def stop(self) -> None:
        self.fed.stop()
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.status.state in ("starting", "waiting", "training"):
            self.status.state = "stopped"
        self._write_status()

    def _write_status(self) -> None:
        self.status.superlink_restarts = len(self.fed.timings.superlink_restart)
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.status), indent=2) + "\n")
        tmp.replace(self.status_path)


class RoundLog(threading.Thread):
    """One log line per completed round (duration, participants, losses), read from the checkpoint
    history the ServerApp writes after each round: the ServerApp's own output stays in the run's log."""

    def __init__(self, checkpoint_dir: Path, rounds: int, every: float = 2.0) -> None:
        super().__init__(name="round-log", daemon=True)
        self.checkpoint_dir, self.rounds, self.every = checkpoint_dir, rounds, every
        self.done = threading.Event()
        self._lock = threading.Lock()  # the thread and __exit__ both poll
        self.logged = max((r.round for r in self._history()), default=0)  # not again after a restart

    def _history(self) -> list[Any]:
        from iotad.fl.checkpoint import CheckpointStore

        try:
            return CheckpointStore(self.checkpoint_dir).history()
        except (OSError, ValueError, TypeError) as exc:  # mid-write or damaged: the next poll retries
            log.debug("round history unreadable: %s", exc)
            return []

    def poll(self) -> None:
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        for rec in (r for r in self._history() if r.round > self.logged):
            failed = rec.failures()
            lost = ", ".join(f"{n} {why}" for why, n in failed.items())
            f1 = rec.metrics.get("f1")
            log.info("round %d/%d done in %.1f s: %d devices%s, train loss %s, threshold %.4g%s", rec.round,
                     self.rounds, rec.duration_seconds, rec.devices_participating,
                     f" (lost: {lost})" if lost else "",
                     "n/a" if rec.train_loss is None else f"{rec.train_loss:.4g}", rec.threshold,
                     "" if f1 is None else f", eval f1 {f1:.3f}")
            self.logged = max(self.logged, rec.round)

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.poll()

    def __enter__(self) -> RoundLog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(timeout=5.0)
        self.poll()  # the last round


# --------------------------------------------------------------------------------------------------
# `iotad aggregator`


def run_aggregator(
    *,
    state_dir: Path,
    certs_dir: Path,
    keys_dir: Path,
    rounds: int,
    min_nodes: int,
    app_dir: Path | None = None,
    fleet_address: str = f"0.0.0.0:{DEFAULT_FLEET_PORT}",
    control_port: int = DEFAULT_CONTROL_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    metrics_host: str = "0.0.0.0",
    metrics_tls: MetricsTLS | None = None,
    run_config: Mapping[str, Any] | None = None,
    join_timeout: float = 600.0,
    run_timeout: float | None = 7200.0,
    max_attempts: int = 5,
    exit_after_training: bool = False,
) -> int:
    """The aggregator container's main process. Returns the exit code (0 trained, 1 failed)."""
    host, _, port = fleet_address.rpartition(":")
    state = Path(state_dir).resolve()
    fed = LocalFederation(
        state, [], app_dir=app_dir or PROJECT_ROOT, certs_dir=certs_dir, keys_dir=keys_dir,
        fleet_host=host or "0.0.0.0", fleet_port=int(port), control_port=control_port,
        join_timeout=join_timeout,
    )
    agg = Aggregator(
        fed, rounds=rounds, checkpoint_dir=state / "checkpoints", multiproc_dir=state / "metrics",
        run_config=run_config, min_nodes=min_nodes, metrics_port=metrics_port, metrics_host=metrics_host,
        metrics_tls=metrics_tls, join_timeout=join_timeout, run_timeout=run_timeout, max_attempts=max_attempts,
    )
    code = 0
    with sigterm_as_keyboard_interrupt():
        try:
            agg.start()
            log.info("aggregator: Fleet API %s (TLS), Control API %s, /metrics %s", fleet_address,
                        fed.control_address, agg.status.metrics_url)
            agg.train()
            code = 0 if agg.status.state == "completed" else 1
            log.log(logging.INFO if code == 0 else logging.ERROR, "training %s: %d/%d rounds", agg.status.state,
                    agg.status.completed_rounds, rounds)
            if not exit_after_training:
                agg.serve_forever()
        except KeyboardInterrupt:
            log.info("aggregator: stopping")
        except DeployError as exc:
            log.error("aggregator: %s", exc)
            code = 1
        finally:
            agg.stop()
    return code


# --------------------------------------------------------------------------------------------------
# `iotad local-federation`: the whole stack on 127.0.0.1
