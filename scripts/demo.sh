#!/usr/bin/env bash
# The main job on one machine: synthetic traffic for 3 devices, the centralised baseline, a 30-round
# federated simulation (Flower simulation engine, 2 local epochs per round), the comparison report and
# the detection story: each device's federated model on a new capture with attack bursts, as timelines.
#   bash scripts/demo.sh [OUT]        (default OUT=out; report in OUT/report/report.md, story.md beside it)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
iotad=.venv/bin/iotad
[ -x "$iotad" ] || { echo "run 'bash scripts/setup.sh' first" >&2; exit 1; }

[ -f "$out/data/dataset.json" ] || "$iotad" synth --devices 3 --rows-per-device 20000 --seed 7 --out "$out/data"
"$iotad" centralized --data "$out/data" --out "$out/centralized"
"$iotad" simulate --data "$out/data" --rounds 30 --out "$out/federated"
"$iotad" compare --runs "$out/centralized" "$out/federated" --out "$out/report"
"$iotad" story --run "$out/federated" --data "$out/data" --out "$out/report"
echo "report: $out/report/report.md, story: $out/report/story.md (synthetic data, not Edge-IIoTset)"
