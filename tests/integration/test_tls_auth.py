"""The Fleet API is gRPC over TLS 1.3 and only registered devices that trust our CA get in.

Real flower-superlink / flower-supernode processes on 127.0.0.1 (flwr 1.39.0). No run is submitted:
joining needs no app. Refused devices run with --max-retries/--max-wait-time so they stop by
themselves; every wait is bounded; the module fixture stops everything it started.
"""

from __future__ import annotations

import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotad.deploy import LocalFederation, generate_certs
from iotad.deploy.processes import HOST, tagged_pids

pytestmark = pytest.mark.integration

REFUSED_EXIT_TIMEOUT = 60.0  # a refused SuperNode must give up well within this


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """SuperLink (TLS + node auth + database) with one registered, online device."""
    workdir = tmp_path_factory.mktemp("tls-auth")
    federation = LocalFederation(
        workdir,
        ["device-0", "rogue", "foreign", "plain", "plain-key"],
        start_timeout=60,
        join_timeout=90,
        stop_timeout=10,
    )
    try:
        federation.prepare_certs()
        federation.start_superlink()
        federation.register_devices(["device-0", "foreign"])
        federation.start_device("device-0")
        federation.wait_online(1)
        yield federation
    finally:
        federation.stop()


@pytest.fixture(scope="module")
def refused(fed: LocalFederation, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int | None, str]]:
    """Start every device that must be refused at once (they fail in parallel); name -> (exit code, log)."""
    other = generate_certs(tmp_path_factory.mktemp("other-ca"))
    before = _online_ids(fed)
    retry = {"max_retries": 0, "max_wait_time": 30.0}
    procs = {
        # Key never registered.
        "rogue": fed.start_device("rogue", **retry),
        # Registered key, but the device trusts another CA.
        "foreign": fed.start_device("foreign", root_certificates=other.ca_cert, **retry),
        # Plaintext gRPC to the TLS port.
        "plain": fed.start_device("plain", insecure=True, auth=False, **retry),
        # Node auth over plaintext: flwr refuses before connecting (ExitCode 303).
        "plain-key": fed.start_device("plain-key", insecure=True, **retry),
    }
    out = {}
    for name, proc in procs.items():
        code = proc.wait(REFUSED_EXIT_TIMEOUT)
        if code is None:
            proc.stop(5)
        out[name] = (code, proc.log_text())
    assert _online_ids(fed) == before
    return out


def _online_ids(fed: LocalFederation) -> set[int]:
    return {int(n["node-id"]) for n in fed.nodes() if n["status"] == "online"}


def test_registered_device_with_our_ca_joins(fed: LocalFederation) -> None:
    dev = fed.devices["device-0"]
    assert dev.node_id is not None
    assert dev.node_id in _online_ids(fed)
    assert dev.proc is not None and dev.proc.alive()
    assert f"SuperNode ID: {dev.node_id}" in dev.proc.log_text()


def test_unregistered_key_is_refused(refused: dict[str, tuple[int | None, str]]) -> None:
    code, log = refused["rogue"]
    assert code not in (None, 0), log[-2000:]
    assert "Failed to activate SuperNode" in log, log[-2000:]


def test_device_trusting_another_ca_is_refused(
    fed: LocalFederation, refused: dict[str, tuple[int | None, str]]
) -> None:
    code, log = refused["foreign"]
    assert code not in (None, 0), log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in log, log[-2000:]
    foreign_id = fed.devices["foreign"].node_id
    assert foreign_id is not None and foreign_id not in _online_ids(fed)


def test_plaintext_device_never_joins(refused: dict[str, tuple[int | None, str]]) -> None:
    code, log = refused["plain"]
    assert code not in (None, 0), log[-2000:]
    assert "SuperNode ID:" not in log


def test_insecure_device_with_key_refuses_to_start(refused: dict[str, tuple[int | None, str]]) -> None:
    code, log = refused["plain-key"]
    assert code not in (None, 0), log[-2000:]
    assert "Exit Code: 303" in log, log[-2000:]


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_fleet_api_is_grpc_over_tls13(fed: LocalFederation, server_name: str) -> None:
    assert fed.fleet_port is not None
    ctx = ssl.create_default_context(cafile=str(fed.certs.ca_cert))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((HOST, fed.fleet_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"  # HTTP/2: gRPC
        assert tls.version() == "TLSv1.3"
        assert tls.getpeercert() is not None


def test_fleet_api_certificate_rejected_under_another_ca(fed: LocalFederation, tmp_path: Path) -> None:
    other = generate_certs(tmp_path / "other-ca")
    assert fed.fleet_port is not None
    ctx = ssl.create_default_context(cafile=str(other.ca_cert))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((HOST, fed.fleet_port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname=HOST)


def test_control_api_is_https_on_loopback_only(fed: LocalFederation) -> None:
    assert fed.control_port is not None
    ctx = ssl.create_default_context(cafile=str(fed.certs.ca_cert))
    with (
        socket.create_connection((HOST, fed.control_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    superlink = fed.superlink
    assert superlink is not None
    argv = superlink.argv
    assert argv[argv.index("--host") + 1] == HOST


def test_supernode_rejoins_restarted_superlink_with_same_node_id(fed: LocalFederation) -> None:
    dev = fed.devices["device-0"]
    assert dev.proc is not None
    fed.kill_superlink(signal.SIGKILL)
    time.sleep(1.0)
    assert dev.proc.alive()  # retries forever (no --max-retries)
    fed.start_superlink()  # same ports, same --database: the registration survives
    online = fed.wait_online(1, timeout=90)
    assert dev.node_id in {int(n["node-id"]) for n in online}


def test_stop_leaves_no_process(fed: LocalFederation) -> None:
    pids = [p.pid for p in fed.registry.processes]
    fed.stop()
    assert tagged_pids(fed.registry.tag) == []
    for proc in fed.registry.processes:
        assert not proc.alive(), proc.name
    assert pids
