#!/usr/bin/env bash
# The test command: lint, types, then unit and integration tests and the fault matrix (containers:
# scripts/e2e.sh; the 20-device load test, marker `load`, runs by hand: docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check iotad tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q -m "not e2e and not load" "$@"
