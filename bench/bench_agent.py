"""Device agent scoring throughput and per-batch latency, from raw CSV rows to flags, on one core.

What one batch costs in the agent: the loader's line splitter + ``encode_frame`` on raw strings, the
scaler, the autoencoder forward pass (torch, 1 thread), the threshold, and the telemetry writes in
prometheus_client multiprocess mode (as the real agent does). Rows come from a labelled synthetic
traffic CSV replayed as fast as possible (``rate=0``).

    python -m bench.bench_agent [--rows N] [--batch-sizes 32,128,512,2048]

Writes bench/results/agent.json and prints a markdown table. Throughput is flows over the summed
batch latencies (one core, no pacing); CPU time is reported too: on a loaded shared box wall figures
vary, flows per CPU-second much less. The encoding share is the loader-splitter + encode_frame part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "agent.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000, help="flows scored per batch size")
    ap.add_argument("--batch-sizes", default="32,128,512,2048")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    from iotad import telemetry

    telemetry.configure_multiprocess(tmp / "metrics")  # like the real agent: mmap-backed values

    import torch

    torch.set_num_threads(1)
    from iotad.agent import Agent, ReplaySource, encode_block
    from iotad.data.loader import load_traffic
    from iotad.data.schema import FEATURE_NAMES
    from iotad.data.synthetic import write_synthetic
    from iotad.detector import detector_from_weights
    from iotad.model import Autoencoder
    from iotad.preprocessing import FeatureStats, Scaler
    from iotad.train import get_weights

    csv = write_synthetic(tmp / "data", 1, 10_000, seed=7)[0]
    tr = load_traffic([csv])
    scaler = Scaler.from_stats(FeatureStats.of(tr.features[tr.labels == 0]))
    weights = get_weights(Autoencoder(len(FEATURE_NAMES)))
    detector_from_weights(weights, scaler, 0.01, round=1, feature_names=FEATURE_NAMES).save(tmp / "model")

    rows_out = []
    for bs in sizes:
        source = ReplaySource(csv, rate=0)
        agent = Agent(source, tmp / "model", telemetry.DeviceTelemetry(f"bench-{bs}"), batch_size=bs)
        agent.reload_if_changed()
        # Warm-up (first torch call, pandas caches), then the measured stretch. Each block is also encoded
        # alone right before the agent processes it, for the encoding share of the same rows.
        for _ in range(3):
            agent.step()
        lat, enc_s, cpu = [], [], 0.0
        flows = 0
        while flows < args.rows:
            block = source.read(bs)
            assert block is not None
            e0 = time.perf_counter()
            encode_block(block)
            enc_s.append(time.perf_counter() - e0)
            c0, t0 = time.process_time(), time.perf_counter()
            flows += agent.process(block)
            lat.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
        wall = float(np.sum(lat))
        lat_a = np.asarray(lat)
        rows_out.append({
            "batch_size": bs,
            "flows": int(flows),
            "batches": len(lat),
            "flows_per_s": round(flows / wall),
            "flows_per_cpu_s": round(flows / cpu),
            "latency_p50_ms": round(float(np.percentile(lat_a, 50)) * 1e3, 2),
            "latency_p99_ms": round(float(np.percentile(lat_a, 99)) * 1e3, 2),
            "encode_share": round(float(np.sum(enc_s)) / wall, 2),
        })
        print(f"batch {bs}: {rows_out[-1]}", flush=True)

    result = {
        "what": "iotad agent: raw CSV rows -> encode_frame -> scaler -> autoencoder -> flags -> telemetry",
        "torch_threads": 1,
        "telemetry": "prometheus_client multiprocess mode",
        "data": "synthetic traffic (not Edge-IIoTset), labelled, 10k rows replayed in a loop",
        "results": rows_out,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| batch | flows/s (wall) | flows/CPU-s | p50 latency ms | p99 latency ms | encoding share |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        print(f"| {r['batch_size']} | {r['flows_per_s']} | {r['flows_per_cpu_s']} | {r['latency_p50_ms']} | "
              f"{r['latency_p99_ms']} | {r['encode_share']:.0%} |")
    print(f"\n(wrote {args.out}; load average {result['load_avg_1m']} on {result['cpus']} CPUs)")
    return result


if __name__ == "__main__":
    main()
