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
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

import numpy as np

from iotad.core.bundle import BundleError
from iotad.data.encoding import SchemaError
from iotad.data.loader import check_header, encode_lines
from iotad.data.schema import (
    FEATURE_NAMES,
    LABEL_COLUMN,
    REJECT_REASONS,
    TYPE_COLUMN,
)
from iotad.edge.inference import NumpyDetector, Scorer, set_blas_threads
from iotad.telemetry.device import DeviceTelemetry
from iotad.telemetry.exporter import configure_multiprocess, serve_metrics

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9401
DEFAULT_BATCH = 256


# --------------------------------------------------------------------------------------------------
# Model bundle watching


#: Loads a bundle directory for scoring (checked against the schema's features).
Loader = Callable[[Path], Scorer]


def load_numpy_detector(model_dir: Path) -> Scorer:
    """The agent's loader: the torch-free :class:`NumpyDetector`, checked against the schema's features."""
    return NumpyDetector.load(model_dir, feature_names=FEATURE_NAMES)


class BundleWatcher:
    """Notices a new global bundle in ``model_dir`` (a ``stat`` of ``bundle.json`` per poll) and loads it.

    The ClientApp writes the bundle with an atomic directory swap, so the stat changes exactly when a
    complete new bundle is in place; :func:`iotad.core.bundle.read_bundle` retries if it changes while being read.

    Parameters
    ----------
    loader
        Builds the detector from the bundle directory; :func:`load_numpy_detector` by default (benchmarks
        pass the torch :class:`iotad.core.detector.Detector`'s to compare).
    """

    def __init__(self, model_dir: Path | str, loader: Loader = load_numpy_detector) -> None:
        self.model_dir = Path(model_dir)
        self.loader = loader
        self._signature: tuple[int, int, int] | None = None
        self._failed: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.model_dir / "bundle.json")
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def check(self) -> Scorer | None:
        """Return a newly loaded detector if the bundle changed since the last load, else None."""
        sig = self._stat()
        if sig is None or sig == self._signature or sig == self._failed:
            return None
        try:
            det = self.loader(self.model_dir)
        except (BundleError, OSError, ValueError) as exc:
            log.warning("model bundle in %s not loadable (keeping the current one): %s", self.model_dir, exc)
            self._failed = sig
            return None
        if det.threshold is None:
            log.warning("model bundle in %s has no threshold; ignored", self.model_dir)
            self._failed = sig
            return None
        self._signature = sig
        return det


# --------------------------------------------------------------------------------------------------
# Traffic sources: both hand out blocks of complete raw CSV lines plus the header they belong to.


@dataclass
class RawBlock:
    """Complete CSV lines (each ends with ``\\n``) of one file whose header is ``header``."""

    data: bytes
    header: list[str]

    @property
    def labelled(self) -> bool:
        return LABEL_COLUMN in self.header and TYPE_COLUMN in self.header


class Source(Protocol):
    def read(self, max_rows: int) -> RawBlock | None: ...

    def close(self) -> None: ...


def _parse_header(line: bytes) -> list[str]:
    text = line.decode("utf-8-sig", errors="replace").strip("\r\n")
    return [name.strip() for name in next(csv.reader([text]))] if text.strip() else []


def _data_lines(raw: bytes) -> list[bytes]:
    """Non-blank lines, each ending with ``\\n`` (the loader's notion of a data row)."""
    return [ln if ln.endswith(b"\n") else ln + b"\n" for ln in raw.splitlines(keepends=True) if ln.strip(b"\r\n")]


class ReplaySource:
    """Replays a labelled traffic CSV at ``rate`` rows/s (0: as fast as scoring goes), looping.

    Parameters
    ----------
    only_attacks
        Replay only the rows labelled as attacks.
    only_normal
        Replay every row except those labelled as attacks: a quiet baseline (anomalies at the false-positive
        rate) that bursts then stand out from, as in a real network.
    burst_rows, burst_every
        Every ``burst_every`` s (0: never) and on :meth:`trigger_burst`, send ``burst_rows`` attack rows
        at once on top of the paced stream.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        rate: float = 100.0,
        only_attacks: bool = False,
        only_normal: bool = False,
        burst_rows: int = 0,
        burst_every: float = 0.0,
        loop: bool = True,
        min_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        raw = self.path.read_bytes()
        first, _, rest = raw.partition(b"\n")
        self.header = _parse_header(first)
        check_header(self.path, self.header, labelled=LABEL_COLUMN in self.header)
        self.lines = _data_lines(rest)
        self.rate = float(rate)
        self.loop = loop
        self.min_interval = min_interval
        self.clock = clock
        self.burst_rows = int(burst_rows)
        self.burst_every = float(burst_every)
        if only_attacks and only_normal:
            raise ValueError("only_attacks and only_normal exclude each other")
        need_attacks = only_attacks or only_normal or burst_rows > 0
        # Without bursts configured, attack rows are found on the first SIGUSR1 burst (lazily: a long
        # replay file is not parsed twice at start for a burst that may never come).
        self._attack_cache: np.ndarray | None = self._attack_rows() if need_attacks else None
        if need_attacks and len(self.attack_rows) == 0:
            raise ValueError(f"{self.path}: no attack rows to replay")
        self.order = np.arange(len(self.lines))
        if only_attacks:
            self.order = self.attack_rows
        elif only_normal:  # malformed rows stay in: they are counted and skipped like live ones
            self.order = np.setdiff1d(self.order, self.attack_rows, assume_unique=True)
        self._pos = 0
        self._burst_pos = 0
        self._pending_burst = 0
        self._lock = threading.Lock()
        self.reset_clock()

    @property
    def attack_rows(self) -> np.ndarray:
        """Data-row numbers of the attack rows (bursts, ``only_attacks``), found on first use."""
        if self._attack_cache is None:
            self._attack_cache = self._attack_rows()
            if len(self._attack_cache) == 0:
                log.warning("%s: no attack rows, bursts are ignored", self.path)
        return self._attack_cache

    def _attack_rows(self) -> np.ndarray:
        """Data-row numbers of valid attack rows, through the loader (the one parser)."""
        from iotad.data.loader import iter_traffic

        idx = [t.row_index[t.labels == 1] for t in iter_traffic(self.path, labelled=True)]
        return np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)

    def reset_clock(self) -> None:
        """Restart pacing now (no backlog of rows 'owed' from before)."""
        self._t0 = self.clock()
        self._emitted = 0
        self._last_burst = self._t0

    def trigger_burst(self, rows: int | None = None) -> None:
        """Queue a burst of attack rows (signal-safe: only bumps a counter)."""
        self._pending_burst += int(rows if rows is not None else self.burst_rows or 500)

    def _take(self, order: np.ndarray, pos: int, n: int) -> tuple[list[int], int]:
        out: list[int] = []
        while len(out) < n and len(order):
            if pos >= len(order):
                if not self.loop:
                    break
                pos = 0
            k = min(n - len(out), len(order) - pos)
            out.extend(order[pos : pos + k].tolist())
            pos += k
        return out, pos

    @property
    def exhausted(self) -> bool:
        return not self.loop and self._pos >= len(self.order) and self._pending_burst == 0

    def read(self, max_rows: int) -> RawBlock | None:
        now = self.clock()
        if self.burst_every > 0 and now - self._last_burst >= self.burst_every:
            self._last_burst = now
            self.trigger_burst()
        with self._lock:
            if self._pending_burst > 0:
                if not len(self.attack_rows):
                    self._pending_burst = 0
                n = min(max_rows, self._pending_burst)
                rows, self._burst_pos = self._take(self.attack_rows, self._burst_pos, n)
                self._pending_burst -= len(rows)
                if rows:
                    return RawBlock(b"".join(self.lines[i] for i in rows), self.header)
            if self.rate > 0:
                owed = int(self.rate * (now - self._t0)) - self._emitted
                if owed > 20 * max_rows:  # we fell far behind (slow box): drop the backlog, keep the pace
                    self.reset_clock()
                    owed = 0
                n = min(max_rows, owed)
                if n < min(max_rows, max(1, int(self.rate * self.min_interval))):
                    return None
            else:
                n = max_rows
            rows, self._pos = self._take(self.order, self._pos, n)
            self._emitted += n
        return RawBlock(b"".join(self.lines[i] for i in rows), self.header) if rows else None

    def close(self) -> None:
        pass


class TailSource:
    """Follows a CSV that another process appends to, like ``tail -F``.

    The first line of the file is its header. Starts at the end of the file (``from_start=False``) or
    at its first data row. Survives rotation (the path names a new file: the old one is drained first)
    and truncation (the file shrank: read again from its header). A partial last line stays buffered
    until its newline arrives; lines equal to the header (concatenated CSVs) are skipped.
    """

    CHUNK = 1 << 16

    def __init__(self, path: Path | str, *, from_start: bool = False) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self._fh: IO[bytes] | None = None
        self._ino: int | None = None
        self._opened_once = False
        self.header: list[str] = []
        self._header_line = b""
        self._buf = b""
        self._lines: list[bytes] = []
        self.rotations = 0
        self.truncations = 0
        self.bad_headers = 0
        self._bad_header_sig: tuple[int, int] | None = None

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (kept open across calls)
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        if not self._read_header(fh, (st.st_ino, st.st_size)):
            fh.close()
            return False
        if not self._opened_once and not self.from_start:
            fh.seek(0, os.SEEK_END)
        self._fh, self._ino, self._opened_once = fh, st.st_ino, True
        self._buf = b""
        return True

    def _read_header(self, fh: IO[bytes], sig: tuple[int, int]) -> bool:
        fh.seek(0)
        line = fh.readline(1 << 20)
        if not line.endswith(b"\n"):
            return False  # empty, or the header is still being written
        header = _parse_header(line)
        try:
            check_header(self.path, header, labelled=False)
        except SchemaError as exc:
            if sig != self._bad_header_sig:
                self.bad_headers += 1
                self._bad_header_sig = sig
                log.error("%s: not scoring this file: %s", self.path, exc)
            return False
        self.header, self._header_line = header, line.rstrip(b"\r\n")
        return True

    def _switch_if_replaced(self) -> bool:
        """Called when the open file has no more data: follow a rotation or a truncation.

        Returns True when there is a (new or rewound) file to read on from."""
        assert self._fh is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # rotated away, successor not there yet: keep waiting
        if st.st_ino != self._ino:
            self._flush_partial()
            self._fh.close()
            self._fh = None
            self.rotations += 1
            return self._open()
        if st.st_size < self._fh.tell():
            self._buf = b""  # a partial line of the old content is gone with it
            self.truncations += 1
            if not self._read_header(self._fh, (st.st_ino, st.st_size)):
                self._fh.close()
                self._fh = None
                return False
            return True
        return False

    def _flush_partial(self) -> None:
        # The old file will not grow any more: its unterminated last line is a (probably cut) row.
        if self._buf.strip(b"\r\n"):
            self._lines.append(self._buf + b"\n")
        self._buf = b""

    def _fill(self, want: int) -> None:
        while len(self._lines) < want and self._fh is not None:
            data = self._fh.read(self.CHUNK)
            if not data:
                if not self._switch_if_replaced():
                    return
                continue
            self._buf += data
            cut = self._buf.rfind(b"\n")
            if cut < 0:
                continue
            complete, self._buf = self._buf[: cut + 1], self._buf[cut + 1 :]
            for ln in _data_lines(complete):
                if ln.rstrip(b"\r\n") != self._header_line:
                    self._lines.append(ln)

    def read(self, max_rows: int) -> RawBlock | None:
        if self._fh is None and not self._open():
            return None
        if self._fh is not None:
            self._fill(max_rows)
        if not self._lines:
            return None
        take, self._lines = self._lines[:max_rows], self._lines[max_rows:]
        return RawBlock(b"".join(take), list(self.header))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------------------------------
# Encoding and scoring


@dataclass
class EncodedBlock:
    features: np.ndarray
    attack_types: np.ndarray | None  # per kept row, when the block is labelled
    rows: int
    rejected: dict[str, int]


def encode_block(block: RawBlock) -> EncodedBlock:
    """Raw lines -> encoded rows, exactly as the loader does it for a file chunk (no deduplication:
    live traffic repeats itself legitimately)."""
    traffic = encode_lines(block.data, block.header, labelled=block.labelled)
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
        enc = encode_block(block)
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

    def step(self) -> bool:
        """Score one block if a model and rows are there; False when idle."""
        if self.detector is None:
            return False
        block = self.source.read(self.batch_size)
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


@dataclass
class AgentOptions:
    device: str
    model_dir: Path
    replay: Path | None = None
    tail: Path | None = None
    metrics_dir: Path | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = "127.0.0.1"
    rate: float = 100.0
    batch_size: int = DEFAULT_BATCH
    only_attacks: bool = False
    only_normal: bool = False
    burst_rows: int = 0
    burst_every: float = 0.0
    from_start: bool = False
    poll_interval: float = 1.0
    threads: int = 1  # numpy BLAS threads for scoring (iotad.edge.inference.set_blas_threads)


def make_source(opts: AgentOptions) -> ReplaySource | TailSource:
    if (opts.replay is None) == (opts.tail is None):
        raise ValueError("give exactly one traffic source: --replay CSV or --tail CSV")
    if opts.replay is not None:
        path = opts.replay / "traffic.csv" if opts.replay.is_dir() else opts.replay
        return ReplaySource(
            path, rate=opts.rate, only_attacks=opts.only_attacks, only_normal=opts.only_normal,
            burst_rows=opts.burst_rows,
            burst_every=opts.burst_every,
        )
    assert opts.tail is not None
    return TailSource(opts.tail, from_start=opts.from_start)


def run_agent(opts: AgentOptions, *, loader: Loader = load_numpy_detector) -> int:
    """Serve /metrics, watch the model directory, score until SIGTERM/SIGINT. Returns the exit code.

    ``loader`` builds the detector (the torch-free :func:`load_numpy_detector` unless a benchmark compares).
    """
    configure_multiprocess(opts.metrics_dir)  # None: keep $PROMETHEUS_MULTIPROC_DIR if set
    source = make_source(opts)
    if not set_blas_threads(opts.threads):  # one core: the rest of the box runs the ClientApps
        log.warning("--threads %d not applied: numpy's BLAS is not an OpenBLAS this agent can reach", opts.threads)
    dev = DeviceTelemetry(opts.device)
    server = serve_metrics(opts.metrics_port, opts.metrics_host)
    log.warning("agent %s: /metrics on %s; model dir %s", opts.device, server.url, opts.model_dir)
    agent = Agent(source, opts.model_dir, dev, batch_size=opts.batch_size, poll_interval=opts.poll_interval,
                  loader=loader)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        agent.stop_event.set()

    def on_burst(signum: int, frame: FrameType | None) -> None:
        if isinstance(source, ReplaySource):
            source.trigger_burst()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_burst)
    try:
        stats = agent.run()
    finally:
        agent.stop()
        server.close()
    log.warning("agent %s stopped: %d flows scored, %d anomalies, %d reloads", opts.device, stats.scored,
                stats.anomalies, stats.reloads)
    return 0
