"""Loader throughput and peak memory on a large CSV in the real 63-column schema.

Generates the CSV (streamed in blocks, so generation itself stays small), then runs
``load_traffic`` in a child process and reads the child's peak RSS from
``getrusage(RUSAGE_CHILDREN)``, so the figure is the loader's alone.

    python -m bench.bench_loader [--rows N] [--chunk-rows K] [--keep CSV]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from iotad.data.schema import (
    ATTACK_TYPES,
    BINARY_COLUMNS,
    CATEGORICAL_VOCAB,
    LABEL_COLUMN,
    NORMAL,
    RAW_COLUMNS,
    TYPE_COLUMN,
)

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"
HEX_COLUMNS = ("tcp.flags", "tcp.checksum", "mqtt.conflags", "mqtt.hdrflags", "mqtt.conack.flags")
EMPTY = np.array(["0", "0.0", "0x00000000", ""], dtype=object)

_CHILD = """
import json, resource, sys, time
from iotad.data.loader import load_traffic
t0 = time.perf_counter()
t = load_traffic(sys.argv[1], chunk_rows=int(sys.argv[2]))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rows_kept": len(t), "rows_read": t.rows_read,
                  "rejected": t.rejected, "features_bytes": t.features.nbytes,
                  "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _column(rng: np.random.Generator, col: str, n: int, hex16: np.ndarray) -> list[str]:
    """Raw strings for one column: real-looking values mixed with every empty spelling."""
    empty = EMPTY[rng.integers(0, len(EMPTY), n)]
    if col == "frame.time":
        return [f" 2021 23:58:{s:09.6f}000 " for s in rng.uniform(0, 60, n)]
    if col in ("ip.src_host", "ip.dst_host"):
        return np.array(["192.168.1.101", "192.168.1.128", "192.168.0.152"], dtype=object)[
            rng.integers(0, 3, n)].tolist()
    if col in BINARY_COLUMNS:
        return np.array(["0", "1", "0.0", "1.0"], dtype=object)[rng.integers(0, 4, n)].tolist()
    if col in CATEGORICAL_VOCAB:
        vocab = np.array([*CATEGORICAL_VOCAB[col], "something_else"], dtype=object)
        values = vocab[rng.integers(0, len(vocab), n)]
        return np.where(rng.random(n) < 0.7, empty, values).tolist()
    if col in HEX_COLUMNS:
        values = hex16[rng.integers(0, 1 << 16 if col == "tcp.checksum" else 64, n)]
        return np.where(rng.random(n) < 0.3, empty, values).tolist()
    if col in ("tcp.ack_raw", "tcp.seq", "tcp.srcport", "tcp.dstport"):
        return rng.integers(0, 1 << 32, n).astype(str).tolist()  # high cardinality: rows stay distinct
    if col == "udp.time_delta":
        delta = np.round(rng.exponential(0.01, n), 6).astype(str)
        return np.where(rng.random(n) < 0.5, empty, delta).tolist()
    values = rng.integers(1, 1500, n).astype(str)
    return np.where(rng.random(n) < 0.6, empty, values).tolist()


def generate(path: Path, rows: int, seed: int = 0, block: int = 100_000) -> None:
    """Write ``rows`` synthetic rows in the raw Edge-IIoTset schema (not realistic traffic)."""
    rng = np.random.default_rng(seed)
    hex16 = np.array([f"0x{v:08x}" for v in range(1 << 16)], dtype=object)
    types = np.array([NORMAL, *ATTACK_TYPES], dtype=object)
    with path.open("w", newline="") as f:
        f.write(",".join(RAW_COLUMNS) + "\n")
        for start in range(0, rows, block):
            n = min(block, rows - start)
            cols = {c: _column(rng, c, n, hex16) for c in RAW_COLUMNS if c not in (LABEL_COLUMN, TYPE_COLUMN)}
            kind = np.where(rng.random(n) < 0.7, 0, rng.integers(1, len(types), n))
            cols[LABEL_COLUMN] = np.where(kind == 0, "0", "1").tolist()
            cols[TYPE_COLUMN] = types[kind].tolist()
            f.write("\n".join(map(",".join, zip(*(cols[c] for c in RAW_COLUMNS), strict=True))))
            f.write("\n")


def run(rows: int, chunk_rows: int, keep: Path | None) -> dict[str, object]:
    """Generate, load in a child process, and return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = keep or Path(tmp) / "edge.csv"
        if not path.exists():
            t0 = time.perf_counter()
            generate(path, rows)
            print(f"generated {rows:,} rows ({path.stat().st_size / 2**20:,.0f} MiB) "
                  f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(chunk_rows)],
            check=True, capture_output=True, text=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_kib = after.ru_maxrss  # ru_maxrss of the (only) child: KiB on Linux
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        child = json.loads(out.stdout)
        size = path.stat().st_size
    return {
        "rows": rows,
        "chunk_rows": chunk_rows,
        "csv_mib": round(size / 2**20, 1),
        "seconds": round(child["seconds"], 2),
        "rows_per_s": round(rows / child["seconds"]),
        # CPU time includes interpreter start-up; it is the steadier figure on a shared machine.
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": round(rows / cpu),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "features_mib": round(child["features_bytes"] / 2**20, 1),
        "rows_kept": child["rows_kept"],
        "rejected": child["rejected"],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None, help="CSV to generate or reuse")
    args = parser.parse_args(argv)
    result = run(args.rows, args.chunk_rows, args.keep)
    print("| rows | CSV MiB | load s | rows/s | CPU s | rows/CPU-s | peak RSS MiB | features MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['rows']:,} | {result['csv_mib']:,} | {result['seconds']} | {result['rows_per_s']:,} "
          f"| {result['cpu_seconds']} | {result['rows_per_cpu_s']:,} "
          f"| {result['peak_rss_mib']:,} | {result['features_mib']:,} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
