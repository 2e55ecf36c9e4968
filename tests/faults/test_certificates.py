"""Fault matrix, security: an aggregator certificate that expired or names another host, and a device
identity re-used by a second SuperNode. Real flower-superlink / flower-supernode processes on 127.0.0.1;
refused devices give up by themselves (--max-retries 0); every wait is bounded.

(Unregistered keys, another CA and plaintext are in tests/integration/test_tls_auth.py.)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotad.deploy import LocalFederation

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REFUSED_EXIT_TIMEOUT = 60.0


def _server_cert(ca_dir: Path, out: Path, *, names: list[str], ips: list[str], days_ago: int, days_valid: int
                 ) -> tuple[Path, Path]:
    """A server certificate signed by the federation's CA, valid from ``days_ago`` days ago for ``days_valid``."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days_valid))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return out / "server.pem", out / "server.key"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path_factory.mktemp("certs"), ["device-0", "twin"], start_timeout=60,
                                 join_timeout=90, stop_timeout=10)
    try:
        federation.prepare_certs()
        federation.start_superlink()
        federation.register_devices(["device-0"])
        yield federation
    finally:
        federation.stop()


def _with_server_cert(fed: LocalFederation, cert: tuple[Path, Path]) -> tuple[bytes, bytes]:
    """Restart the SuperLink (same ports and database) serving ``cert``; returns the good one to restore."""
    good = fed.certs.server_cert.read_bytes(), fed.certs.server_key.read_bytes()
    fed.kill_superlink()
    fed.certs.server_cert.write_bytes(cert[0].read_bytes())
    fed.certs.server_key.write_bytes(cert[1].read_bytes())
    fed.start_superlink()
    return good


def _restore(fed: LocalFederation, good: tuple[bytes, bytes]) -> None:
    fed.kill_superlink()
    fed.certs.server_cert.write_bytes(good[0])
    fed.certs.server_key.write_bytes(good[1])
    fed.start_superlink()


def _refused(fed: LocalFederation, name: str, **kwargs: object) -> str:
    proc = fed.start_device(name, max_retries=0, max_wait_time=30.0, **kwargs)  # type: ignore[arg-type]
    code = proc.wait(REFUSED_EXIT_TIMEOUT)
    if code is None:
        proc.stop(5)
    log = proc.log_text()
    log = log[log.rfind("\n# ") + 1 :]  # this start's lines only (a device's log file keeps every start)
    assert code not in (None, 0), log[-2000:]
    assert "SuperNode ID:" not in log
    return log


@pytest.mark.parametrize(("case", "names", "ips", "days_ago", "days_valid", "error"), [
    ("expired", ["aggregator", "localhost"], ["127.0.0.1"], 400, 30, "certificate has expired"),
    ("not yet valid", ["aggregator", "localhost"], ["127.0.0.1"], -30, 400, "certificate is not yet valid"),
    ("another host name", ["aggregator.other.example"], ["10.9.8.7"], 1, 400, "Hostname Verification Check failed"),
])
def test_a_device_refuses_an_aggregator_certificate_that_does_not_hold(
    fed: LocalFederation, tmp_path: Path, case: str, names: list[str], ips: list[str], days_ago: int,
    days_valid: int, error: str,
) -> None:
    bad = _server_cert(fed.certs.root, tmp_path / "bad", names=names, ips=ips, days_ago=days_ago,
                       days_valid=days_valid)
    good = _with_server_cert(fed, bad)
    try:
        log = _refused(fed, "device-0")
        assert error in log, log[-2000:]
    finally:
        _restore(fed, good)


def test_a_re_used_device_identity_is_refused_while_the_device_is_online(fed: LocalFederation) -> None:
    """A second SuperNode with device-0's private key (a cloned SD card, a stolen key) gets no session."""
    fed.start_device("device-0")
    online = fed.wait_online(1)
    log = _refused(fed, "twin", private_key=fed.certs.device_private_key("device-0"))
    assert "Failed to activate SuperNode" in log, log[-2000:]
    assert {n["node-id"] for n in fed.nodes() if n["status"] == "online"} == {n["node-id"] for n in online}
    device = fed.devices["device-0"].proc
    assert device is not None and device.alive()
