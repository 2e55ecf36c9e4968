"""The detector on the real Edge-IIoTset rows in shared/ (never committed): FPR on unseen normal rows and
MITM recall, with every empty field respelled to check that nothing depends on the spelling.

The normal capture (5,000 packets of the "Distance" sensor) is cut in time: the first ``--train-rows``
packets train and calibrate (``iotad centralized --train-csv``), the rest are unseen; they are evaluated
together with the MITM capture (1,229 rows, many malformed or duplicated). Each file is its own stream
for the window statistics.

    python -m bench.bench_real_rows [--real DIR] [--train-rows 3000] [--seeds 0 1 2]

Writes bench/results/real-rows.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.conftest import REAL_MITM, REAL_NORMAL, _real_dir, respell


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "iotad.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def measure(real: Path, train_rows: int, seed: int, features: str, work: Path) -> dict[str, Any]:
    lines = (real / REAL_NORMAL).read_text().splitlines(keepends=True)
    head, tail = work / "normal-head.csv", work / "normal-tail.csv"
    head.write_text("".join(lines[: 1 + train_rows]))
    tail.write_text(lines[0] + "".join(lines[1 + train_rows:]))
    out: dict[str, Any] = {"seed": seed, "features": features}
    for spelling, mitm in (("as released", real / REAL_MITM), ("respelled", work / "mitm-respelled.csv")):
        if spelling == "respelled":
            mitm.write_text(respell((real / REAL_MITM).read_text()))
            for src in (head, tail):
                src.write_text(respell(src.read_text()))
        r = work / f"R-{features}-{seed}-{spelling.replace(' ', '')}"
        run(["centralized", "--train-csv", str(head), "--eval-csv", str(tail), str(mitm), "--seed", str(seed),
             "--features", features, "--out", str(r)])
        m = json.loads((r / "metrics.json").read_text())
        out[spelling] = {"fpr": m["fpr"], "mitm_recall": m["per_attack_recall"].get("MITM"),
                         "roc_auc": m["roc_auc"], "n_normal": m["n_normal"], "n_attack": m["n_attack"],
                         "threshold": m["threshold"]}
    out["spelling_independent"] = out["as released"] == out["respelled"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=Path, default=_real_dir())
    p.add_argument("--train-rows", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real-rows.json")
    a = p.parse_args()
    if a.real is None:
        sys.exit("real Edge-IIoTset rows not found: --real DIR")
    rows = []
    with tempfile.TemporaryDirectory(prefix="iotad-real-") as tmp:
        for features in ("window", "packet"):
            for seed in a.seeds:
                work = Path(tmp) / f"{features}-{seed}"
                work.mkdir()
                rows.append(measure(a.real, a.train_rows, seed, features, work))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| features | seed | FPR on unseen normal rows | MITM recall | ROC-AUC | normal / attack rows | "
          "same for any spelling |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["as released"]
        print(f"| {r['features']} | {r['seed']} | {m['fpr']:.4f} | {m['mitm_recall']:.3f} | {m['roc_auc']:.4f} | "
              f"{m['n_normal']} / {m['n_attack']} | {'yes' if r['spelling_independent'] else 'NO'} |")


if __name__ == "__main__":
    main()
