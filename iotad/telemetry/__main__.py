"""``python -m iotad.telemetry``: the metric catalogue as markdown, for docs/monitoring.md."""

from iotad.telemetry.catalogue import catalogue_markdown

print(catalogue_markdown(), end="")
