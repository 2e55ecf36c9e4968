"""``iotad agent``: options, traffic source, /metrics and signals around the scoring loop."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from iotad.edge.agent import DEFAULT_BATCH, Agent
from iotad.edge.capture import CaptureSource
from iotad.edge.inference import set_blas_threads
from iotad.edge.reload import Loader, load_numpy_detector
from iotad.edge.sources import ReplaySource, Source
from iotad.edge.tail import TailSource
from iotad.telemetry.device import DeviceTelemetry
from iotad.telemetry.exporter import MetricsTLS, configure_multiprocess, serve_metrics

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9401


@dataclass
class AgentOptions:
    device: str
    model_dir: Path
    replay: Path | None = None
    tail: Path | None = None
    capture: str | None = None  # a network interface, read through tshark
    capture_filter: str = ""
    decode_as: tuple[str, ...] = ()
    metrics_dir: Path | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = "127.0.0.1"
    metrics_tls: MetricsTLS | None = None  # HTTPS + client-certificate auth for /metrics
    rate: float = 100.0
    batch_size: int = DEFAULT_BATCH
    only_attacks: bool = False
    only_normal: bool = False
    burst_rows: int = 0
    burst_every: float = 0.0
    from_start: bool = False
    poll_interval: float = 1.0
    threads: int = 1  # numpy BLAS threads for scoring (iotad.edge.inference.set_blas_threads)


def make_source(opts: AgentOptions) -> Source:
    if [opts.replay, opts.tail, opts.capture].count(None) != 2:
        raise ValueError("give exactly one traffic source: --replay CSV, --tail CSV or --capture INTERFACE")
    if opts.capture is not None:
        return CaptureSource(opts.capture, capture_filter=opts.capture_filter, decode_as=opts.decode_as)
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
    server = serve_metrics(opts.metrics_port, opts.metrics_host, tls=opts.metrics_tls)
    log.info("agent %s: /metrics on %s; model dir %s", opts.device, server.url, opts.model_dir)
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
    log.info("agent %s stopped: %d flows scored, %d anomalies, %d reloads", opts.device, stats.scored,
                stats.anomalies, stats.reloads)
    return 0
