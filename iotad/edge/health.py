"""The device container's health check: ready = ``/metrics`` answers and the agent scores with a model.

``python3 -m iotad.edge.health [PORT]`` exits 0 when ready, and 1 with the reason on stdout otherwise. That
includes "no model yet", so ``docker compose ps`` does not call a device healthy while it only waits for a
model bundle. The port defaults to the one the entrypoint wrote to ``/tmp/iotad-metrics-port``, else
``$IOTAD_METRICS_PORT``. Standard library only: it runs every 10 s.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.request
from pathlib import Path

PORT_FILE = Path("/tmp/iotad-metrics-port")
_MODEL_ROUND = re.compile(r"^iotad_edge_model_round(?:\{[^}]*\})?\s+(\S+)$", re.MULTILINE)


def check(metrics_text: str) -> str | None:
    """None when ready, else why not."""
    rounds = [float(v) for v in _MODEL_ROUND.findall(metrics_text)]
    if not rounds:
        return "the agent exports no iotad_edge_model_round yet (starting)"
    if max(rounds) < 1:
        return "no model yet: waiting for the federation's first round or a model delivery"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args:
            port = int(args[0])
        elif PORT_FILE.exists():
            port = int(PORT_FILE.read_text().strip())
        else:
            port = int(os.environ.get("IOTAD_METRICS_PORT", "9401"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=4) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, ValueError) as exc:
        print(f"not ready: /metrics does not answer ({exc})")
        return 1
    reason = check(text)
    print(f"not ready: {reason}" if reason else "ready")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
