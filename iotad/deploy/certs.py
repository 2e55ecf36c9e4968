"""TLS material and SuperNode keys of a federation (thin wrapper around ``scripts/gen-certs.sh``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GEN_CERTS_ENV = "IOTAD_GEN_CERTS"


class CertError(RuntimeError):
    """The certificate script is missing or failed."""


@dataclass(frozen=True)
class CertPaths:
    """Layout written by ``gen-certs.sh`` (all paths absolute)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def device_dir(self, name: str) -> Path:
        return self.root / "devices" / name

    def device_private_key(self, name: str) -> Path:
        """OpenSSH ECDSA P-384 private key, for ``flower-supernode --auth-supernode-private-key``."""
        return self.device_dir(name) / "node_key"

    def device_metrics_cert(self, name: str) -> tuple[Path, Path]:
        """The device exporter's certificate and key (``gen-certs.sh --metrics``)."""
        return self.device_dir(name) / "metrics.pem", self.device_dir(name) / "metrics.key"

    @property
    def prometheus_client_cert(self) -> tuple[Path, Path]:
        """Prometheus's client certificate and key (``gen-certs.sh --metrics``)."""
        return self.root / "prometheus" / "client.pem", self.root / "prometheus" / "client.key"

    def device_public_key(self, name: str) -> Path:
        """OpenSSH public key, for ``flwr supernode register``."""
        return self.device_dir(name) / "node_key.pub"


def find_gen_certs_script() -> Path:
    """Locate ``gen-certs.sh``: ``$IOTAD_GEN_CERTS``, else ``scripts/`` of the source checkout."""
    candidates = []
    if env := os.environ.get(GEN_CERTS_ENV):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "scripts" / "gen-certs.sh")
    for path in candidates:
        if path.is_file():
            return path
    raise CertError(f"gen-certs.sh not found (looked at {', '.join(map(str, candidates))}); set {GEN_CERTS_ENV}")


def generate_certs(
    outdir: Path | str,
    *,
    devices: Sequence[str] = (),
    dns_names: Sequence[str] = ("aggregator",),
    force: bool = False,
    metrics: bool = False,
    timeout: float = 60.0,
) -> CertPaths:
    """Create (or keep) the CA, the aggregator certificate and one key pair per device.

    Idempotent like the script: existing files are kept unless ``force``.

    Returns
    -------
    CertPaths
        Where everything is.
    """
    if shutil.which("bash") is None:
        raise CertError("bash not found")
    out = Path(outdir).resolve()
    argv = ["bash", str(find_gen_certs_script())]
    if force:
        argv.append("--force")
    if metrics:  # certificates for /metrics over HTTPS with client-certificate auth
        argv.append("--metrics")
    for name in dns_names:
        argv += ["--dns", name]
    for name in devices:
        argv += ["--device", name]
    argv.append(str(out))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise CertError(f"gen-certs.sh failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return CertPaths(out)
