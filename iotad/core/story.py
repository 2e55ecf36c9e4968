"""``iotad story``: a detection timeline per device, on a new synthetic capture with attack bursts.

For each device bundle of a run (``RUN/devices/device-<k>/model``), the story capture of that device
(:mod:`iotad.data.synthetic.story`: the same device, rows it never trained on, normal traffic with a
few attack bursts at known times) is scored row by row with the device's own bundle, as
``iotad score`` does. Times are replay times at ``rate`` rows/s, as a device container replays it.

Written to OUT: ``captures/device-<k>.csv`` (the capture in the raw schema, for ``iotad score`` or a
replay), ``timeline-device-<k>.png`` (score, threshold, flagged rows per 15 s, the bursts shaded),
``story.json`` (per burst: start, end, rows, share flagged; the false-flag share of normal rows; the
counters a device would export every 15 s, for the alert test) and ``story.md``. Synthetic data: an
illustration of the pipeline, not a measurement on real traffic.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iotad.core.bundle_read import read_bundle
from iotad.core.centralized import score_csv
from iotad.data.schema import TYPE_COLUMN
from iotad.data.synthetic.story import STORY_LENGTH, story_traffic, write_capture

SAMPLE_SECONDS = 15.0  # Prometheus' scrape interval in monitoring/prometheus.yml
DEFAULT_RATE = 10.0  # rows/s: a small gateway's traffic; bursts then last minutes, as the alert expects


@dataclass(frozen=True)
class Burst:
    attack_type: str
    start_s: float
    end_s: float
    rows: int
    flagged_share: float


@dataclass(frozen=True)
class DeviceStory:
    device: str
    rows: int
    seconds: float
    threshold: float
    normal_flagged_share: float
    bursts: list[Burst]
    # Cumulative iotad_edge_scored_flows_total / iotad_edge_anomalous_flows_total every SAMPLE_SECONDS.
    scored_series: list[int]
    anomalous_series: list[int]


def _series(flags: np.ndarray, t: np.ndarray, seconds: float) -> tuple[list[int], list[int]]:
    edges = np.arange(0.0, seconds + SAMPLE_SECONDS, SAMPLE_SECONDS)
    scored = np.searchsorted(t, edges, side="right")
    flagged = np.concatenate([[0], np.cumsum(flags)])[scored]
    return scored.astype(int).tolist(), flagged.astype(int).tolist()


def device_story(name: str, model: Path, capture: Path, types: np.ndarray, rate: float,
                 workdir: Path) -> tuple[DeviceStory, dict]:
    """Score ``capture`` (traffic type per row: ``types``) with ``model``; the story and the per-row arrays
    for the plot."""
    scores_csv = workdir / f"scores-{name}.csv"
    score_csv(model, capture, scores_csv)
    with open(scores_csv, newline="") as f:
        scored = list(csv.DictReader(f))
    row = np.array([int(r["row"]) for r in scored])
    score = np.array([float(r["score"]) for r in scored])
    flag = np.array([int(r["anomaly"]) for r in scored], dtype=bool)
    kind = np.array([types[i] for i in row], dtype=object)
    t = row / rate
    seconds = float(len(types) / rate)
    threshold = read_bundle(model).threshold
    if threshold is None:
        raise ValueError(f"{model}: the bundle has no threshold")
    bursts = []
    for attack in sorted(set(kind) - {"Normal"}, key=lambda a: float(t[kind == a].min())):
        sel = kind == attack
        bursts.append(Burst(str(attack), round(float(t[sel].min()), 1), round(float(t[sel].max()), 1),
                            int(sel.sum()), round(float(flag[sel].mean()), 4)))
    normal = kind == "Normal"
    scored_series, anomalous_series = _series(flag, t, seconds)
    story = DeviceStory(name, len(types), round(seconds, 1), threshold,
                        round(float(flag[normal].mean()) if normal.any() else 0.0, 4), bursts,
                        scored_series, anomalous_series)
    return story, {"t": t, "score": score, "flag": flag, "kind": kind}


def _plot(story: DeviceStory, arrays: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, score, flag, kind = (arrays[k] for k in ("t", "score", "flag", "kind"))
    minutes = t / 60.0
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, height_ratios=(3, 2))
    normal = kind == "Normal"
    ax.scatter(minutes[normal], score[normal], s=2, c="0.55", label="normal row", rasterized=True)
    ax.scatter(minutes[~normal], score[~normal], s=2, c="tab:red", label="attack row", rasterized=True)
    ax.axhline(story.threshold, color="k", lw=1, ls="--", label=f"threshold {story.threshold:.3g}")
    ax.set(yscale="log", ylabel="anomaly score")
    ax.set_title(f"{story.device}: a new capture (same device, other rows) with attack bursts; synthetic data",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", markerscale=4)
    edges = np.arange(0.0, story.seconds + SAMPLE_SECONDS, SAMPLE_SECONDS)
    flagged, _ = np.histogram(t[flag], bins=edges)
    scored, _ = np.histogram(t, bins=edges)
    bx.bar(edges[:-1] / 60.0, flagged, width=SAMPLE_SECONDS / 60.0, align="edge", color="tab:orange",
           label="flagged rows per 15 s")
    bx.plot(edges[:-1] / 60.0, 0.05 * scored, color="k", lw=0.8, label="5% of scored rows")
    bx.set(xlabel="replay time (minutes)", ylabel="rows")
    bx.legend(fontsize=7, loc="upper left")
    for b in story.bursts:
        for axis in (ax, bx):
            axis.axvspan(b.start_s / 60.0, b.end_s / 60.0, color="tab:red", alpha=0.08)
        ax.text(b.start_s / 60.0, ax.get_ylim()[1], b.attack_type, fontsize=6, va="top", rotation=90)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_story(run: Path, data: Path, out: Path, *, episodes: int = 3, rate: float = DEFAULT_RATE,
                plot: bool = True) -> Path:
    """Every device of ``run`` (``RUN/devices/device-<k>/model``), trained on the synthetic ``data``
    (``iotad synth``: its ``dataset.json`` names the seed); returns ``OUT/story.md``."""
    try:
        meta = json.loads((Path(data) / "dataset.json").read_text())
        seed, rows = int(meta["seed"]), int(meta["rows_per_device"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{data}: not iotad synth output (dataset.json with seed and rows_per_device): "
                         f"{exc}") from exc
    if meta.get("kind") != "synthetic":
        raise ValueError(f"{data}: the story needs synthetic data (it generates new captures of the devices)")
    bundles = sorted(Path(run).glob("devices/device-*/model"), key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
    if not bundles:
        raise ValueError(f"{run}: no device bundles (RUN/devices/device-<k>/model); "
                         "a run with per-device normalisation has them")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stories: list[DeviceStory] = []
    plots: list[str] = []
    for model in bundles:
        name = model.parent.name
        frame = story_traffic(int(name.rsplit("-", 1)[1]), rows, seed, episodes)
        capture = write_capture(frame, out / "captures" / f"{name}.csv")
        story, arrays = device_story(name, model, capture, frame[TYPE_COLUMN].to_numpy(), rate, out)
        (out / f"scores-{name}.csv").unlink(missing_ok=True)
        stories.append(story)
        if plot:
            plots.append(_plot(story, arrays, out / f"timeline-{name}.png").name)
    doc: dict[str, Any] = {"data_kind": "synthetic", "run": str(run), "data": str(data), "seed": seed,
                           "training_rows_per_device": rows, "story_length": STORY_LENGTH,
                           "rate_rows_per_s": rate, "sample_seconds": SAMPLE_SECONDS,
                           "devices": [asdict(s) for s in stories]}
    (out / "story.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# iotad: detection timeline per device", "",
             "> **Synthetic data.** A new capture of each device from iotad's generator (the training "
             f"data's seed {seed}, {STORY_LENGTH:g} times its {rows} rows: the same devices, other "
             f"rows), normal traffic with the {episodes} attack families that come in the densest bursts, "
             f"replayed at {rate:g} rows/s. An illustration, not a measurement.", "",
             "| device | attack burst | from (min) | to (min) | rows | flagged |", "|---|---|---|---|---|---|"]
    for s in stories:
        for b in s.bursts:
            lines.append(f"| {s.device} | {b.attack_type} | {b.start_s / 60:.1f} | {b.end_s / 60:.1f} | {b.rows} "
                         f"| {b.flagged_share:.1%} |")
    lines += ["", "Normal rows flagged (false alarms): "
              + ", ".join(f"{s.device} {s.normal_flagged_share:.2%}" for s in stories), ""]
    lines += [f"![{p}]({p})" for p in plots] + [""]
    report = out / "story.md"
    report.write_text("\n".join(lines))
    return report
