"""Device agent scoring: throughput, per-batch latency and process memory, torch Detector vs NumpyDetector.

What one batch costs in the agent: the loader's line splitter + ``encode_frame`` on raw strings, the
scaler, the autoencoder forward pass, the threshold, and the telemetry writes in prometheus_client
multiprocess mode (as the real agent does). The forward pass runs either in torch (the
:class:`iotad.core.detector.Detector`, 1 torch thread: the agent before it went torch-free) or in numpy (the
:class:`iotad.edge.inference.NumpyDetector` the agent uses, 1 BLAS thread), on the same bundle and the same
rows: a labelled synthetic traffic CSV replayed as fast as possible (``rate=0``).

    python -m bench.bench_agent [--rows N] [--batch-sizes 32,512,2048] [--rss-seconds 20]
                                [--model-dir BUNDLE --replay CSV]

Writes bench/results/agent.json and prints markdown tables. Throughput is flows over the summed batch
latencies (one core, no pacing); CPU time is reported too: on a loaded shared box wall figures vary, flows
per CPU-second much less. The encoding and scoring shares are measured on the same blocks right before the
agent processes them (scoring: ``decision_function`` + ``predict_scores`` on the encoded rows).

Memory: two real agent processes, one after the other, replay ``--replay`` at ``--rate 0`` for
``--rss-seconds`` s each, then get SIGTERM; the peak RSS (VmHWM of /proc/<pid>/status) is read just before.
"numpy" is the ``iotad agent`` command itself; "torch" is the same :func:`iotad.edge.run.run_agent` with the
torch Detector as loader after ``import torch; torch.set_num_threads(1)``, as the agent did before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "agent.json"
SCORERS = ("torch", "numpy")

# The agent as it ran before it went torch-free: torch imported and limited to one thread, the torch
# Detector as loader. argv: model_dir replay metrics_dir metrics_port.
TORCH_AGENT = """
import sys
from functools import partial
from pathlib import Path

import torch

torch.set_num_threads(1)
from iotad.edge.agent import AgentOptions, run_agent
from iotad.data.schema import FEATURE_NAMES
from iotad.core.detector import Detector

model_dir, replay, metrics_dir, port = sys.argv[1:5]
opts = AgentOptions(device="bench", model_dir=Path(model_dir), replay=Path(replay), metrics_dir=Path(metrics_dir),
                    metrics_port=int(port), rate=0.0)
sys.exit(run_agent(opts, loader=partial(Detector.load, feature_names=FEATURE_NAMES)))
"""


def _loader(scorer: str) -> Any:
    from functools import partial

    from iotad.data.schema import FEATURE_NAMES

    if scorer == "torch":
        from iotad.core.detector import Detector

        return partial(Detector.load, feature_names=FEATURE_NAMES)
    from iotad.edge.reload import load_numpy_detector

    return load_numpy_detector


def measure_batches(csv: Path, model_dir: Path, scorer: str, bs: int, rows: int) -> dict[str, Any]:
    """Score ``rows`` flows through :meth:`Agent.process` in blocks of ``bs``."""
    from iotad.edge.agent import Agent, encode_block
    from iotad.edge.sources import ReplaySource
    from iotad.telemetry import device as tdev

    source = ReplaySource(csv, rate=0)
    agent = Agent(source, model_dir, tdev.DeviceTelemetry(f"bench-{scorer}-{bs}"), batch_size=bs,
                  loader=_loader(scorer))
    agent.reload_if_changed()
    det = agent.detector
    assert det is not None
    # Warm-up (first call, pandas caches), then the measured stretch. Each block is also encoded and scored
    # alone right before the agent processes it, for the encoding and scoring shares of the same rows.
    for _ in range(3):
        agent.step()
    lat, enc_s, score_s, cpu = [], [], [], 0.0
    flows = 0
    while flows < rows:
        block = source.read(bs)
        assert block is not None
        e0 = time.perf_counter()
        features = encode_block(block).features
        e1 = time.perf_counter()
        det.predict_scores(det.decision_function(features))
        enc_s.append(e1 - e0)
        score_s.append(time.perf_counter() - e1)
        c0, t0 = time.process_time(), time.perf_counter()
        flows += agent.process(block)
        lat.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
    wall = float(np.sum(lat))
    lat_a = np.asarray(lat)
    return {
        "scorer": scorer,
        "batch_size": bs,
        "flows": int(flows),
        "batches": len(lat),
        "flows_per_s": round(flows / wall),
        "flows_per_cpu_s": round(flows / cpu),
        "latency_p50_ms": round(float(np.percentile(lat_a, 50)) * 1e3, 2),
        "latency_p99_ms": round(float(np.percentile(lat_a, 99)) * 1e3, 2),
        "encode_share": round(float(np.sum(enc_s)) / wall, 2),
        "score_share": round(float(np.sum(score_s)) / wall, 2),
        "score_p50_ms": round(float(np.percentile(score_s, 50)) * 1e3, 3),
    }


def _status_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def measure_process(scorer: str, model_dir: Path, replay: Path, seconds: float, work: Path) -> dict[str, Any]:
    """Run a real agent process for ``seconds`` s at rate 0; its peak RSS and the flows it scored."""
    from iotad.deploy.processes import free_port

    metrics = work / f"metrics-{scorer}"
    metrics.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if scorer == "torch":
        argv = [sys.executable, "-c", TORCH_AGENT, str(model_dir), str(replay), str(metrics), str(port)]
    else:
        argv = [sys.executable, "-m", "iotad.cli", "agent", "--device", "bench", "--model-dir", str(model_dir),
                "--replay", str(replay), "--rate", "0", "--metrics-dir", str(metrics), "--metrics-port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    log = work / f"agent-{scorer}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            time.sleep(seconds)
            if proc.poll() is not None:
                raise RuntimeError(f"{scorer} agent exited early ({proc.returncode}): {log.read_text()[-2000:]}")
            hwm, rss = _status_kib(proc.pid, "VmHWM"), _status_kib(proc.pid, "VmRSS")
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    m = re.search(r"stopped: (\d+) flows scored", text)
    return {
        "scorer": scorer,
        "command": " ".join([*argv[:2], "<TORCH_AGENT>", *argv[3:]]) if scorer == "torch" else " ".join(argv),
        "seconds": seconds,
        "exit_code": rc,
        "peak_rss_mib": round(hwm / 1024, 1),
        "rss_at_end_mib": round(rss / 1024, 1),
        "flows_scored": int(m.group(1)) if m else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000, help="flows scored per batch size and scorer")
    ap.add_argument("--batch-sizes", default="32,512,2048")
    ap.add_argument("--members", type=int, default=4, help="ensemble size of the bench's own bundle")
    ap.add_argument("--rss-seconds", type=float, default=20.0, help="run time of each agent process (0: skip)")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="bundle for the process runs (default: the bench's own untrained bundle)")
    ap.add_argument("--replay", type=Path, default=None, help="traffic CSV for the process runs (default: the bench's)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    from iotad.telemetry import exporter as texp

    texp.configure_multiprocess(tmp / "metrics")  # like the real agent: mmap-backed values

    import torch

    torch.set_num_threads(1)
    from iotad.core.detector import detector_from_weights
    from iotad.core.model import Autoencoder
    from iotad.core.preprocessing import FeatureStats, Scaler
    from iotad.core.train import get_weights
    from iotad.data.loader import load_traffic
    from iotad.data.schema import FEATURE_NAMES
    from iotad.data.synthetic import write_synthetic
    from iotad.edge.inference import set_blas_threads

    set_blas_threads(1)  # as `iotad agent --threads 1`
    csv = write_synthetic(tmp / "data", 1, 10_000, seed=7)[0]
    tr = load_traffic([csv])
    scaler = Scaler.from_stats(FeatureStats.of(tr.features[tr.labels == 0]))
    torch.manual_seed(0)
    weights = get_weights(Autoencoder(len(FEATURE_NAMES), members=args.members))
    detector_from_weights(weights, scaler, 0.01, round=1, feature_names=FEATURE_NAMES).save(tmp / "model")

    rows_out = []
    for bs in sizes:
        for scorer in SCORERS:  # interleaved: both see the same box load
            rows_out.append(measure_batches(csv, tmp / "model", scorer, bs, args.rows))
            print(f"batch {bs} {scorer}: {rows_out[-1]}", flush=True)

    processes = []
    if args.rss_seconds > 0:
        model_dir, replay = args.model_dir or tmp / "model", args.replay or csv
        for scorer in SCORERS:
            processes.append(measure_process(scorer, model_dir, replay, args.rss_seconds, tmp))
            print(f"process {scorer}: {processes[-1]}", flush=True)

    result = {
        "what": "iotad agent: raw CSV rows -> encode_frame -> scaler -> autoencoder -> flags -> telemetry",
        "scorers": {"torch": "iotad.core.detector.Detector, 1 torch thread (the agent before)",
                    "numpy": "iotad.edge.inference.NumpyDetector, 1 OpenBLAS thread (the agent now)"},
        "telemetry": "prometheus_client multiprocess mode",
        "data": "synthetic traffic (not Edge-IIoTset), labelled, 10k rows replayed in a loop",
        "results": rows_out,
        "processes": processes,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| batch | scorer | flows/s (wall) | flows/CPU-s | p50 latency ms | p99 latency ms | encoding share "
          "| scoring share | scoring p50 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        print(f"| {r['batch_size']} | {r['scorer']} | {r['flows_per_s']} | {r['flows_per_cpu_s']} | "
              f"{r['latency_p50_ms']} | {r['latency_p99_ms']} | {r['encode_share']:.0%} | {r['score_share']:.0%} | "
              f"{r['score_p50_ms']} |")
    if processes:
        print("\n| agent process | peak RSS (VmHWM) MiB | flows scored |")
        print("|---|---:|---:|")
        for p in processes:
            print(f"| {p['scorer']} | {p['peak_rss_mib']} | {p['flows_scored']} in {p['seconds']:g} s |")
    print(f"\n(wrote {args.out}; load average {result['load_avg_1m']} on {result['cpus']} CPUs)")
    return result


if __name__ == "__main__":
    main()
