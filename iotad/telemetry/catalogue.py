"""The catalogue of every metric iotad defines (``python -m iotad.telemetry`` prints it for docs/monitoring.md)."""

from __future__ import annotations

from iotad.telemetry.device import EDGE_SPECS
from iotad.telemetry.federation import FL_SPECS
from iotad.telemetry.spec import MetricSpec


def catalogue() -> tuple[MetricSpec, ...]:
    """Return every metric iotad defines (aggregator first, then device)."""
    return FL_SPECS + EDGE_SPECS


def catalogue_markdown() -> str:
    """Render the catalogue as a markdown table (docs/monitoring.md embeds it)."""
    rows = ["| metric | type | labels | multiprocess | written by | meaning |", "|---|---|---|---|---|---|"]
    for s in catalogue():
        labels = ", ".join(s.labels) or "-"
        rows.append(f"| `{s.name}` | {s.kind} | {labels} | {s.mode or 'sum'} | {s.writer} | {s.help} |")
    return "\n".join(rows) + "\n"


