#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 / Python 3.11 machine: a venv in .venv with iotad and its pinned
# dependencies (CPU-only torch), the dev tools, promtool for the monitoring checks, and tshark for live
# capture (`iotad capture`, `iotad agent --capture`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[simulation,report,dev]"

if ! command -v promtool >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # A policy-rc.d keeps the packaged Prometheus service from starting: tests start their own.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends prometheus >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if ! command -v tshark >/dev/null; then
  # noninteractive: wireshark-common's "may non-root users capture?" question keeps its default (no)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
    tshark >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o DPkg::Lock::Timeout=600 --no-install-recommends tshark >/dev/null; }
fi
echo "setup done: . .venv/bin/activate"
