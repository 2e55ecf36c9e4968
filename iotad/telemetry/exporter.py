"""Serving ``/metrics``: in-memory registries, or the multiprocess directory a host's processes share."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from iotad.telemetry.spec import metrics_created

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# HTTPS with client-certificate auth for /metrics: all three set, or none (plain HTTP).
TLS_CERT_ENV = "IOTAD_METRICS_TLS_CERT"
TLS_KEY_ENV = "IOTAD_METRICS_TLS_KEY"
TLS_CLIENT_CA_ENV = "IOTAD_METRICS_CLIENT_CA"


@dataclass(frozen=True)
class MetricsTLS:
    """``/metrics`` over HTTPS: this exporter's certificate and key, and the CA a scraper's client
    certificate must chain to (a scraper without one is refused in the TLS handshake)."""

    cert: Path
    key: Path
    client_ca: Path

    @classmethod
    def from_values(cls, cert: str | os.PathLike[str] | None, key: str | os.PathLike[str] | None,
                    client_ca: str | os.PathLike[str] | None) -> MetricsTLS | None:
        """None when nothing is given; a ValueError naming what is missing when only part is."""
        given = {"certificate": cert, "key": key, "client CA": client_ca}
        if not any(given.values()):
            return None
        missing = [name for name, v in given.items() if not v]
        if missing:
            raise ValueError(f"metrics TLS needs a certificate, its key and a client CA; missing: {', '.join(missing)}")
        tls = cls(Path(str(cert)), Path(str(key)), Path(str(client_ca)))
        unreadable = [str(p) for p in (tls.cert, tls.key, tls.client_ca) if not p.is_file()]
        if unreadable:
            raise ValueError(f"metrics TLS: no such file: {', '.join(unreadable)}")
        return tls



def make_registry() -> CollectorRegistry:
    """Return a fresh, empty registry (tests)."""
    return CollectorRegistry(auto_describe=True)


def multiprocess_enabled() -> bool:
    """Whether metrics created now are written to ``$PROMETHEUS_MULTIPROC_DIR``."""
    return bool(getattr(_values.ValueClass, "_multiprocess", False))


def prepare_multiproc_dir(path: str | os.PathLike[str], *, wipe: bool = True) -> Path:
    """Create the multiprocess directory; ``wipe`` removes files of a previous boot.

    Call once per host before the SuperNode and agent start: stale files would add a previous
    container's counters to this one's (Prometheus sees no reset) and keep its gauges.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if wipe:
        for f in p.glob("*.db"):
            f.unlink(missing_ok=True)
    return p


def configure_multiprocess(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Write this process's metrics to a multiprocess directory (long-lived writers: agent, launcher).

    Sets ``PROMETHEUS_MULTIPROC_DIR`` (inherited by child processes) when ``path`` is given and
    switches prometheus_client to mmap-backed values. Must run before the first
    :func:`edge_metrics`/:func:`fl_metrics`. Returns the directory, or ``None`` when neither
    ``path`` nor the variable is set (in-memory mode stays).
    """
    if path is not None:
        os.environ[MULTIPROC_ENV] = str(path)
    target = os.environ.get(MULTIPROC_ENV)
    if not target:
        return None
    Path(target).mkdir(parents=True, exist_ok=True)
    if not multiprocess_enabled():
        if metrics_created():
            raise RuntimeError("configure_multiprocess() must run before any iotad metric is created")
        # Documented prometheus_client hook (custom process identifiers use the same assignment).
        _values.ValueClass = _values.MultiProcessValue()
    return Path(target)


class _ReapingCollector(MultiProcessCollector):
    """MultiProcessCollector that first drops ``live*`` gauge files of processes that have exited."""

    def collect(self) -> Iterable[Any]:
        for f in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            pid = Path(f).stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), self._path)
        return super().collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (daemon thread); ``port`` is the bound port."""

    host: str
    port: int
    registry: CollectorRegistry
    _httpd: Any
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(port: int, host: str = "127.0.0.1", multiproc_dir: str | os.PathLike[str] | None = None,
                  registry: CollectorRegistry | None = None, tls: MetricsTLS | None = None) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (port 0: any free port) from a daemon thread.

    With ``tls``: HTTPS only, and a scraper must present a client certificate that ``tls.client_ca``
    signed (prometheus_client's ``client_auth_required``).

    With a multiprocess directory (``multiproc_dir`` or ``$PROMETHEUS_MULTIPROC_DIR``) it serves the
    union of every process's files, this one's included; otherwise ``registry`` (default: global).
    Containers pass ``host="0.0.0.0"``; the default keeps a developer's exporter off the network.
    """
    mp = str(multiproc_dir) if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV)
    if mp:
        if metrics_created() and not multiprocess_enabled():
            raise RuntimeError("metrics of this process are in memory and would not be served: "
                               "call configure_multiprocess() before creating them")
        reg = CollectorRegistry()
        _ReapingCollector(reg, path=mp)
    else:
        reg = REGISTRY if registry is None else registry
    if tls is None:
        httpd, _ = start_http_server(port, addr=host, registry=reg)
    else:
        httpd, _ = start_http_server(port, addr=host, registry=reg, certfile=str(tls.cert), keyfile=str(tls.key),
                                     client_cafile=str(tls.client_ca), client_auth_required=True)
    return MetricsServer(host, int(httpd.server_port), reg, httpd, tls=tls is not None)


