"""Aggregator memory: the ServerApp's footprint step by step, and the peaks of the aggregator's processes.

The aggregator container (``server/entrypoint.sh`` -> ``iotad aggregator``) runs the launcher (``/metrics``,
run supervision), ``flower-superlink``, its ``flower-superexec`` for ServerApps, ``flwr`` CLI processes
(device registration, ``flwr run --stream`` per run attempt, ``flwr ls``) and, while a run is live, one
``flwr-serverapp`` process that imports the app (which starts a short-lived child for the initial weights).

    python -m bench.bench_aggregator_memory [--launcher-seconds 20] [--federation] [--timeout 600]
    python -m bench.bench_aggregator_memory --container iotad-e2e-aggregator-1 --out FILE   # beside an e2e

1. ``serverapp``: a fresh interpreter does what a ``flwr-serverapp`` process does with the app, one step at a
   time: import flwr's ServerApp API, import ``iotad.fl.server_app``, compute the initial weights, write a round
   checkpoint (``CheckpointStore.save``), read it back (``CheckpointStore.latest``, the resume path). VmRSS /
   VmHWM of /proc/self/status after each step, and whether torch is loaded.
2. ``launcher``: ``iotad aggregator`` on 127.0.0.1 with throwaway certificates and no devices, for
   ``--launcher-seconds`` (its join timeout; then it gives up): peak RSS of the launcher, the SuperLink and
   the ServerApp SuperExec.
3. ``--federation``: ``iotad local-federation`` (2 devices, 2 rounds, 1500 rows each, 1 epoch) bounded by
   ``--timeout``: peak RSS of every process by kind, the ``flwr-serverapp`` among them. Its launcher is not
   the aggregator's (it also generates data and runs the devices); the aggregator's is measured in 2.
4. ``--container NAME``: only this: waits (up to ``--timeout`` s) for the container, then samples its
   processes from the host until it stops, plus its cgroup's (v1) memory usage, with a timeline; run it in
   the background of ``scripts/e2e.sh compose``.

Processes are sampled every 0.5 s (VmHWM is the kernel's exact per-process peak; the sums are of VmRSS at one
sample, so pages shared between processes count once per process). Writes bench/results/aggregator_memory.json
(or ``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "aggregator_memory.json"

SERVERAPP_STEPS = r"""
import json, sys, tempfile
from pathlib import Path

def report(step):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    kib = {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}
    print(json.dumps({"step": step, "rss_kib": kib["VmRSS"], "hwm_kib": kib["VmHWM"],
                      "torch": "torch" in sys.modules}), flush=True)

report("python")
import flwr.app, flwr.serverapp, flwr.serverapp.strategy
report("import flwr.serverapp")
import iotad.fl.server_app
report("import iotad.fl.server_app")
import numpy as np
from iotad.fl.checkpoint import Checkpoint, CheckpointStore
from iotad.data.schema import N_FEATURES
from iotad.core.evaluation import ClassHistograms
from iotad.core.preprocessing import FeatureStats, ResidualScale, Scaler
from iotad.fl.strategy import FederationConfig

cfg = FederationConfig()
weights = iotad.fl.server_app.initial_weights(cfg.model_seed, cfg.members)
report("initial_weights")
rng = np.random.default_rng(0)
scaler = Scaler.from_stats(FeatureStats.of(rng.normal(size=(64, N_FEATURES))))
residual = ResidualScale(count=64, sumsq=rng.random(N_FEATURES * cfg.members) + 1.0)
with tempfile.TemporaryDirectory() as tmp:
    store = CheckpointStore(Path(tmp))
    store.save(Checkpoint(1, weights, scaler, 0.5, 0.99, residual), [], ClassHistograms())
    report("checkpoint saved")
    assert store.latest() is not None
    report("checkpoint read (resume)")
"""


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every descendant of ``pid``."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return [(k, pid) for k in kids] + [d for k in kids for d in descendants(k)]


def kind(cmdline: str) -> str:
    """Process kind from its command line (the executable or the iotad sub-command)."""
    for name in ("flwr-serverapp", "flwr-clientapp", "flower-superlink", "flower-supernode"):
        if name in cmdline:
            return name
    if "flower-superexec" in cmdline:  # its command line does not say whose: see sample_tree
        return "flower-superexec"
    if "manual_seed" in cmdline:  # iotad.fl.server_app.initial_weights' child (python -c)
        return "initial-weights child"
    if " flwr " in f" {cmdline} " or "/flwr " in cmdline:
        return "flwr " + cmdline.split("flwr ", 1)[1].split()[0]
    args = cmdline.split()
    if any(a == "iotad" or a.endswith("/iotad") or a == "iotad.cli" for a in args[:3]):  # script or -m
        for sub in ("aggregator", "local-federation", "agent", "device"):
            if sub in args:
                return f"iotad {sub}"
    return cmdline.split()[0] if cmdline else "?"


#: Processes of the aggregator container (not the devices', nor local-federation's own launcher).
AGGREGATOR_KINDS = ("iotad aggregator", "flower-superlink", "flower-superexec (of flower-superlink)",
                    "flwr-serverapp", "initial-weights child", "flwr run", "flwr ls", "flwr supernode")


def sample_tree(root: int, running: Callable[[], bool], cgroup: Path | None = None) -> dict[str, Any]:
    """Sample ``root`` and its descendants every 0.5 s while ``running()``; with ``cgroup`` (a cgroup v1
    memory directory) also the cgroup's usage and its anonymous + mapped-file memory (``memory.stat``)."""
    peaks: dict[int, dict[str, Any]] = {}
    sum_peak = agg_peak = 0
    cg = {"usage_mib": 0, "rss_plus_mapped_file_mib": 0}
    timeline: list[list[Any]] = []  # [s since start, summed RSS MiB, cgroup usage MiB, kinds alive]
    t0 = time.monotonic()
    while running():
        total = agg = 0
        for pid, parent in [(root, 0), *descendants(root)]:
            try:
                st = status_kib(pid)
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, ValueError):
                continue
            if "VmHWM" not in st:  # a zombie
                continue
            e = peaks.setdefault(pid, {"hwm_kib": 0})
            if cmd:  # empty between fork and exec
                e["kind"] = kind(cmd)
                if e["kind"] == "flower-superexec" and parent in peaks:
                    e["kind"] += f" (of {peaks[parent].get('kind')})"
            e["hwm_kib"] = max(e["hwm_kib"], st["VmHWM"])
            total += st["VmRSS"]
            agg += st["VmRSS"] if e.get("kind") in AGGREGATOR_KINDS else 0
        sum_peak, agg_peak = max(sum_peak, total), max(agg_peak, agg)
        usage = 0
        if cgroup is not None:
            try:
                stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
                usage = int((cgroup / "memory.usage_in_bytes").read_text())
            except (OSError, ValueError):
                pass
            else:
                cg["usage_mib"] = max(cg["usage_mib"], usage >> 20)
                resident = int(stat["total_rss"]) + int(stat["total_mapped_file"])
                cg["rss_plus_mapped_file_mib"] = max(cg["rss_plus_mapped_file_mib"], resident >> 20)
        alive = sorted({peaks[p].get("kind", "?") for p, _ in [(root, 0), *descendants(root)] if p in peaks})
        timeline.append([round(time.monotonic() - t0, 1), total // 1024, usage >> 20, alive])
        time.sleep(0.5)
    by_kind: dict[str, dict[str, int]] = {}
    for e in peaks.values():
        k = by_kind.setdefault(e.get("kind", "?"), {"processes": 0, "max_hwm_mib": 0})
        k["processes"] += 1
        k["max_hwm_mib"] = max(k["max_hwm_mib"], e["hwm_kib"] // 1024)
    out = {"by_kind": by_kind, "tree_rss_sum_peak_mib": sum_peak // 1024,
           "aggregator_rss_sum_peak_mib": agg_peak // 1024, "timeline": timeline}
    return {**out, "cgroup": cg} if cgroup is not None else out


def sample_process(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """:func:`sample_tree` of a child until it exits, SIGTERM after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    res = sample_tree(proc.pid, lambda: proc.poll() is None and time.monotonic() < deadline)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)
    return {"returncode": proc.returncode, **res}


def run_container(name: str, wait: float) -> dict[str, Any]:
    """:func:`sample_tree` of a container's processes (seen from the host) until it stops; waits up to
    ``wait`` s for it to start."""
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}} {{.Id}}", name], capture_output=True,
                             text=True)
        pid, _, cid = out.stdout.strip().partition(" ")
        if out.returncode == 0 and pid not in ("", "0"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"container {name} did not start within {wait:.0f} s")
        time.sleep(0.5)
    cgroup = Path(f"/sys/fs/cgroup/memory/docker/{cid}")
    return {"returncode": None, **sample_tree(int(pid), lambda: os.path.exists(f"/proc/{pid}"),
                                              cgroup if cgroup.is_dir() else None)}


def run_serverapp_steps() -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-c", SERVERAPP_STEPS], capture_output=True, text=True, timeout=300,
                         check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def run_launcher(seconds: float) -> dict[str, Any]:
    from iotad.deploy.certs import generate_certs
    from iotad.deploy.processes import free_port

    with tempfile.TemporaryDirectory(prefix="iotad-aggmem-") as tmp:
        certs = generate_certs(Path(tmp) / "certs", devices=[])
        argv = [sys.executable, "-m", "iotad.cli", "aggregator", "--state-dir", f"{tmp}/state",
                "--certs-dir", str(certs.root), "--keys-dir", f"{tmp}/keys",
                "--fleet-address", f"127.0.0.1:{free_port()}", "--control-port", str(free_port()),
                "--metrics-host", "127.0.0.1", "--metrics-port", str(free_port()),
                "--join-timeout", str(seconds), "--exit-after-training", "--max-attempts", "1"]
        with open(f"{tmp}/launcher.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            return sample_process(proc, seconds + 120)


def run_federation(timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iotad-aggmem-fed-") as tmp:
        argv = [sys.executable, "-m", "iotad.cli", "local-federation", "--devices", "2", "--rounds", "2",
                "--rows-per-device", "1500", "--local-epochs", "1", "--rate", "20", "--workdir", f"{tmp}/w"]
        with open(f"{tmp}/federation.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            return sample_process(proc, timeout)


def report(name: str, r: dict[str, Any]) -> None:
    print(f"\n`{name}` (exit {r['returncode']}; summed RSS at the peak sample: all processes "
          f"{r['tree_rss_sum_peak_mib']} MiB, aggregator processes {r['aggregator_rss_sum_peak_mib']} MiB)\n")
    if "cgroup" in r:
        print(f"cgroup peaks: usage {r['cgroup']['usage_mib']} MiB, anonymous + mapped files "
              f"{r['cgroup']['rss_plus_mapped_file_mib']} MiB\n")
    print("| process | count | peak RSS (VmHWM) MiB |\n| --- | --- | --- |")
    for k, v in sorted(r["by_kind"].items(), key=lambda kv: -kv[1]["max_hwm_mib"]):
        print(f"| {k} | {v['processes']} | {v['max_hwm_mib']} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--launcher-seconds", type=float, default=20.0)
    p.add_argument("--federation", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0, help="bound of the --federation run, s")
    p.add_argument("--container", help="only sample this running (or starting) container, e.g. "
                   "iotad-e2e-aggregator-1 during scripts/e2e.sh compose")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.container:
        sampled = run_container(a.container, a.timeout)
        report(a.container, sampled)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"container": a.container, **sampled}, indent=2) + "\n")
        return
    res: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                           "date": time.strftime("%Y-%m-%d")}
    res["serverapp"] = run_serverapp_steps()
    print("| ServerApp step (fresh interpreter) | VmRSS MiB | VmHWM MiB | torch loaded |\n| --- | --- | --- | --- |")
    for s in res["serverapp"]:
        print(f"| {s['step']} | {s['rss_kib'] // 1024} | {s['hwm_kib'] // 1024} | {s['torch']} |")
    runs = {"launcher": lambda: run_launcher(a.launcher_seconds)}
    if a.federation:
        runs["federation"] = lambda: run_federation(a.timeout)
    for name, fn in runs.items():
        res[name] = fn()
        report(name, res[name])
        del res[name]["timeline"]  # kept for --container only (a few hundred samples)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
