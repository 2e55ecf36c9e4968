"""Which leftover Flower processes a SuperLink restart sweeps (iotad.deploy.federation)."""

from __future__ import annotations

import os
import subprocess
import sys

from iotad.deploy.flower import _orphaned_superexec


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_superexec_is_an_orphan_only_when_its_parent_is_gone() -> None:
    # Flower 1.39's command lines (SuperLink's and SuperNode's SuperExec differ only in --parent-pid's owner).
    def argv(parent: int, script: bytes = b"/opt/venv/bin/flower-superexec") -> list[bytes]:
        return [b"/opt/venv/bin/python", script, b"--root-certificates", b"ca.pem", b"--runtime-api-address",
                b"127.0.0.1:9091", b"--parent-pid", str(parent).encode(), b""]

    assert not _orphaned_superexec(argv(os.getpid()))
    assert _orphaned_superexec(argv(_gone_pid()))
    assert _orphaned_superexec([b"flower-superexec", b"--parent-pid", str(_gone_pid()).encode()])
    assert not _orphaned_superexec(argv(_gone_pid(), script=b"/opt/venv/bin/flower-supernode"))
    assert not _orphaned_superexec([b"flower-superexec", b"--parent-pid"])  # malformed: leave it alone
