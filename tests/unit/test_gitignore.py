"""What `init`, the demo and the CLI write into a checkout stays out of git: private keys above all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GENERATED = [
    "certs/ca.key",  # docker compose up (init) and scripts/gen-certs.sh certs
    "certs/server.key",
    "certs/aggregator/server.key",
    "certs/devices/device-0/node_key",
    "certs/devices/device-0/metrics.key",
    ".env",  # GRAFANA_ADMIN_PASSWORD
    "out/report/report.md",  # scripts/demo.sh
    "runs/fed/model/weights.pt",
    "wheelhouse/amd64/torch-2.13.0-cp311-cp311-linux_x86_64.whl",  # scripts/build-wheelhouse.sh
    ".venv/bin/python",
]
TRACKED_LOOKALIKES = [".env.example", "client/device.env.example", "scripts/gen-certs.sh", "monitoring/prometheus.yml"]


def check_ignore(paths: list[str]) -> set[str]:
    """The paths git would ignore (``--no-index``: as if none of them were tracked)."""
    git = shutil.which("git")
    assert git, "git is needed for this test"
    proc = subprocess.run([git, "-C", str(ROOT), "check-ignore", "--no-index", "--stdin"],
                          input="\n".join(paths) + "\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode in (0, 1), proc.stderr  # 1: none ignored
    return set(proc.stdout.split())


@pytest.mark.parametrize("path", GENERATED)
def test_generated_files_are_ignored(path: str) -> None:
    assert path in check_ignore([path]), f"{path} is not git-ignored"


def test_sources_beside_them_are_not_ignored() -> None:
    assert check_ignore(TRACKED_LOOKALIKES) == set()
    for path in TRACKED_LOOKALIKES:
        assert (ROOT / path).exists(), path
