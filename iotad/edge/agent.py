"""Device agent: the long-lived half of a device (the ClientApp is the short-lived half).

It serves the device's ``/metrics`` (its own series plus everything the ``flwr-clientapp`` processes
wrote to the same ``PROMETHEUS_MULTIPROC_DIR``), hot-reloads the global model bundle the evaluate
handler writes to the model directory after every round, and scores traffic continuously:

* replay: the device's labelled traffic CSV at a fixed rate, looping (demo, tests), optionally only
  its attack rows, plus bursts of attack rows (every N s or on ``SIGUSR1``: anomaly-spike alerts);
* tail: a CSV another process appends to, followed like ``tail -F`` (rotation, truncation, partial
  last lines, repeated headers).

Rows go through the data layer's own parsing and encoding (the loader's line splitter and
:func:`iotad.data.encoding.encode_frame`) in small batches; bad rows are counted per reason and
skipped, never fatal. Until the first bundle exists the agent waits; while a new bundle loads it keeps
scoring with the old one.

Scoring is numpy only (:class:`iotad.edge.inference.NumpyDetector`): the agent never imports torch, which
would add a few hundred MB to an always-on process that only needs one small forward pass per batch.

This module is the scoring loop; the sources are in :mod:`iotad.edge.sources` and :mod:`iotad.edge.tail`,
hot reload in :mod:`iotad.edge.reload`, the ``iotad agent`` entry point in :mod:`iotad.edge.run`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iotad.data.loader import encode_lines
from iotad.data.schema import REJECT_REASONS
from iotad.edge.inference import Scorer
from iotad.edge.reload import BundleWatcher, Loader, load_numpy_detector
from iotad.edge.sources import RawBlock, ReplaySource, Source
from iotad.features.sets import WindowStage, feature_set_of, stage_for
from iotad.telemetry.device import DeviceTelemetry

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256


# --------------------------------------------------------------------------------------------------
# Model bundle watching


# --------------------------------------------------------------------------------------------------
# Traffic sources: both hand out blocks of complete raw CSV lines plus the header they belong to.


# --------------------------------------------------------------------------------------------------
# Encoding and scoring


@dataclass
class EncodedBlock:
    features: np.ndarray
    attack_types: np.ndarray | None  # per kept row, when the block is labelled
    rows: int
    rejected: dict[str, int]


def encode_block(block: RawBlock, windows: WindowStage | None = None) -> EncodedBlock:
    """Raw lines -> encoded rows, exactly as the loader does it for a file chunk (no deduplication:
    live traffic repeats itself legitimately); with ``windows``, its statistics continue the stream."""
    if windows is not None and block.new_stream:
        windows.start_stream()
    traffic = encode_lines(block.data, block.header, labelled=block.labelled, extra=windows)
    types = traffic.attack_types if block.labelled else None
    return EncodedBlock(traffic.features, types, traffic.rows_read, traffic.rejected)


@dataclass
class AgentStats:
    """Running totals (tests, logs, benchmarks); Prometheus has the same numbers."""

    rows: int = 0
    scored: int = 0
    anomalies: int = 0
    batches: int = 0
    reloads: int = 0
    model_round: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    latencies: list[float] = field(default_factory=list)


class Agent:
    """Always-on detector of one device.

    Parameters
    ----------
    source
        Where rows come from (:class:`ReplaySource` or :class:`TailSource`).
    model_dir
        Where the ClientApp's evaluate handler writes the global bundle.
    telemetry_
        The device's recorder (a fresh registry in tests).
    loader
        Builds the detector from the bundle directory (see :class:`BundleWatcher`).
    """

    def __init__(
        self,
        source: Source,
        model_dir: Path | str,
        telemetry_: DeviceTelemetry,
        *,
        batch_size: int = DEFAULT_BATCH,
        poll_interval: float = 1.0,
        idle_sleep: float = 0.05,
        keep_latencies: int = 0,
        loader: Loader = load_numpy_detector,
    ) -> None:
        self.source = source
        self.watcher = BundleWatcher(model_dir, loader)
        self.telemetry = telemetry_
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.idle_sleep = idle_sleep
        self.keep_latencies = keep_latencies
        self.detector: Scorer | None = None
        self.windows: WindowStage | None = None  # the stream's window state: survives model reloads
        self._feature_set: str | None = None
        self._window_seen = (0, 0, 0)
        self.stats = AgentStats()
        self.stop_event = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self.telemetry.prime(reject_reasons=REJECT_REASONS)
        self.telemetry.metrics.model_round.labels(device=self.telemetry.device).set(0)

    # model ----------------------------------------------------------------------------------------
    def reload_if_changed(self) -> bool:
        """Load a new bundle if there is one; the old detector keeps scoring until the swap."""
        det = self.watcher.check()
        if det is None:
            return False
        assert det.threshold is not None
        first = self.detector is None
        feature_set = feature_set_of(det.feature_names or ())
        if feature_set != self._feature_set:  # only a model on other features restarts the window state
            self.windows, self._feature_set = stage_for(feature_set), feature_set
        self.detector = det  # one reference assignment: the scoring loop sees old or new, never half
        self.stats.reloads += 1
        self.stats.model_round = det.round
        self.telemetry.model_loaded(model_round=det.round, threshold=det.threshold)
        if first and isinstance(self.source, ReplaySource):
            self.source.reset_clock()
        log.info("model round %d loaded (threshold %.6g)", det.round, det.threshold)
        return True

    def _watch(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.reload_if_changed()
            except Exception:  # a watcher must never die: log and try again next poll
                log.exception("model reload failed")
            self.stop_event.wait(self.poll_interval)

    def start_watcher(self) -> None:
        self.reload_if_changed()
        self._watch_thread = threading.Thread(target=self._watch, name="bundle-watcher", daemon=True)
        self._watch_thread.start()

    # scoring --------------------------------------------------------------------------------------
    def process(self, block: RawBlock) -> int:
        """Encode and score one block; returns flows scored. Needs a loaded model."""
        det = self.detector
        assert det is not None
        t0 = time.perf_counter()
        enc = encode_block(block, self.windows)
        self._record_windows()
        self.stats.rows += enc.rows
        if any(enc.rejected.values()):
            self.telemetry.rejected(enc.rejected)
            for reason, n in enc.rejected.items():
                self.stats.rejected[reason] += n
        if len(enc.features) == 0:
            return 0
        scores = det.decision_function(enc.features)
        flags = det.predict_scores(scores)
        seconds = time.perf_counter() - t0
        self.telemetry.scored(scores, flags, seconds=seconds, attack_types=enc.attack_types)
        self.stats.batches += 1
        self.stats.scored += len(scores)
        self.stats.anomalies += int(flags.sum())
        if self.keep_latencies:
            self.stats.latencies.append(seconds)
            del self.stats.latencies[: -self.keep_latencies]
        return len(scores)

    def _record_windows(self) -> None:
        if self.windows is None:
            return
        state = self.windows.state
        c = state.counters
        now = (sum(c.evicted.values()), c.clamped, c.bad_time)
        evicted, clamped, bad = (a - b for a, b in zip(now, self._window_seen, strict=True))
        self._window_seen = now
        self.telemetry.windows(evicted=evicted, tracked=sum(state.tracked().values()), clamped=clamped,
                               bad_time=bad)

    def step(self) -> bool:
        """Score one block if a model and rows are there; False when idle."""
        if self.detector is None:
            return False
        block = self.source.read(self.batch_size)
        self.telemetry.load(backlog_bytes=self.source.backlog_bytes(), shed_rows=self.source.take_shed_rows())
        if block is None:
            return False
        try:
            self.process(block)
        except Exception:  # never crash the device on input: count the block and go on
            log.exception("scoring a block failed; %d rows skipped", block.data.count(b"\n"))
            self.telemetry.rejected({"non_numeric": block.data.count(b"\n")})
        return True

    def run(self, duration: float | None = None) -> AgentStats:
        """Score until :meth:`stop` (or ``duration`` s); the watcher thread reloads bundles meanwhile."""
        if self._watch_thread is None:
            self.start_watcher()
        deadline = None if duration is None else time.monotonic() + duration
        waiting_logged = False
        while not self.stop_event.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.detector is None and not waiting_logged:
                log.info("waiting for a model bundle in %s", self.watcher.model_dir)
                waiting_logged = True
            if isinstance(self.source, ReplaySource) and self.source.exhausted:
                break
            if not self.step():
                self.stop_event.wait(self.idle_sleep)
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        self.source.close()


# --------------------------------------------------------------------------------------------------
# Process entry point (``iotad agent``)
