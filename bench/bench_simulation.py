"""Large simulation on this machine: N virtual devices, R rounds, a fraction sampled per round.

Runs ``iotad simulate`` in a child process and samples the summed RSS of its whole process tree
(the Ray workers included) every 0.5 s; reports wall time and the peak.

    python -m bench.bench_simulation [--devices 100 --rounds 3 --fraction 0.1 --rows 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss_bytes(root: int) -> int:
    """Summed RSS of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--rows", type=int, default=1000, help="rows per device")
    args = ap.parse_args()
    iotad = [sys.executable, "-m", "iotad.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "run"
        subprocess.run([*iotad, "synth", "--devices", str(args.devices), "--rows-per-device", str(args.rows),
                        "--seed", "1", "--out", str(data)], check=True)
        t0 = time.monotonic()
        proc = subprocess.Popen([*iotad, "simulate", "--data", str(data), "--rounds", str(args.rounds),
                                 "--fraction", str(args.fraction), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.5)
        wall = time.monotonic() - t0
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            sys.exit(f"simulate failed ({proc.returncode}):\n{err[-3000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
    result = {
        "devices": args.devices, "rounds": args.rounds, "fraction": args.fraction, "rows_per_device": args.rows,
        "wall_seconds": round(wall, 1), "peak_tree_rss_mib": round(peak / 2**20),
        "devices_trained_per_round": [r["devices_participating"] for r in history],
        "f1": metrics["f1"], "cpu_count": os.cpu_count(),
    }
    print("| devices | rounds | sampled/round | wall s | peak RSS (process tree) | F1 (synthetic) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.devices} | {args.rounds} | {result['devices_trained_per_round']} | {result['wall_seconds']} "
          f"| {result['peak_tree_rss_mib']} MiB | {metrics['f1']} |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "simulation.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
