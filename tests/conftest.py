"""Shared test fixtures."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REAL_NORMAL = "normal_distance_part1.csv"
REAL_MITM = "MITM_attack.csv"


def _real_dir() -> Path | None:
    if os.environ.get("IOTAD_REAL_DATA"):
        return Path(os.environ["IOTAD_REAL_DATA"])
    # ../shared from the repo root; searched upwards so a worktree or CI checkout depth does not matter.
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "edge-iiotset-real"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real() -> Path:
    """The folder of real Edge-IIoTset rows (never committed): missing is a failure, not a skip,
    unless ``IOTAD_NO_REAL_DATA=1``; ``IOTAD_REAL_DATA=<dir>`` points elsewhere."""
    found = _real_dir()
    if found is not None and (found / REAL_NORMAL).is_file() and (found / REAL_MITM).is_file():
        return found
    if os.environ.get("IOTAD_NO_REAL_DATA") == "1":
        pytest.skip("IOTAD_NO_REAL_DATA=1: real Edge-IIoTset rows not available")
    where = found or "../shared/data/edge-iiotset-real"
    pytest.fail(f"real Edge-IIoTset rows not found (looked in {where}); "
                "set IOTAD_REAL_DATA=<dir> or IOTAD_NO_REAL_DATA=1")


def respell(text: str) -> str:
    """Rewrite every field that is exactly "0.0" or "0x00000000" as "0"."""
    return re.sub(r"(?<![^,\n])(?:0\.0|0x00000000)(?![^,\r\n])", "0", text)
