#!/usr/bin/env bash
# The test command: lint, types, then unit and integration tests (containers: scripts/e2e.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check iotad tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q -m "not e2e" "$@"
