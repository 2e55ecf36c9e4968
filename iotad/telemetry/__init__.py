"""Every Prometheus metric of iotad, and how processes write and serve them.

Naming: ``iotad_<fl|edge>_<quantity>_<unit>``; counters end in ``_total``; units are base units
(``seconds``, ``bytes``, ``ratio``) or, for dimensionless numbers, what is counted (``rounds``,
``devices``, ``flows``, ...) or the score scale (``score`` = reconstruction error, ``loss``).
Labels come only from :data:`ALLOWED_LABELS`. Round numbers, IPs and flow ids are never labels.
Every ``edge`` metric carries ``device``; ``fl`` metrics carry no ``device`` label.

Process model
-------------
Two kinds of writers share one set of definitions:

* Long-lived processes serve ``/metrics``: the device agent (``iotad.edge.agent``) and the aggregator's
  launcher/exporter. They call :func:`serve_metrics`.
* Short-lived processes only write: Flower starts one ``flwr-clientapp`` process per message on a
  device, and one ``flwr-serverapp`` process per run on the aggregator. They write through
  prometheus_client's multiprocess mode: every process keeps its values in
  ``$PROMETHEUS_MULTIPROC_DIR/<type>_<pid>.db`` (mmap files that outlive the process).

One directory per host (container), one server: the entrypoint exports ``PROMETHEUS_MULTIPROC_DIR``
for the SuperNode (Flower passes its environment down to every ClientApp) and the agent alike, and
wipes it before either starts (:func:`prepare_multiproc_dir`). The agent also writes in
multiprocess mode, so its own values land in the same directory, and :func:`serve_metrics` serves
only a :class:`~prometheus_client.multiprocess.MultiProcessCollector` over it: the union of the
agent and every ClientApp that ever ran, each series exactly once (serving the agent's in-memory
registry as well would count it twice). How values of several processes combine:

* counters and histograms: summed over all files, dead processes included (so they never drop);
* "state" gauges (train loss, model round, threshold, quality, ...): ``mostrecent``, the value
  written last by any process, alive or dead (a ``live*`` mode would drop a dead ClientApp's loss);
* ``iotad_fl_last_round_timestamp_seconds``: ``max``; ``iotad_fl_active_runs``: ``livesum``,
  written only by the launcher; files of dead processes in ``live*`` modes are removed at every
  scrape.

Multiprocess mode is chosen when the first metric is created: either ``PROMETHEUS_MULTIPROC_DIR`` is
set before the process starts (ClientApp, ServerApp), or the process calls
:func:`configure_multiprocess` before :func:`edge_metrics` / :func:`fl_metrics` (the agent). Metrics
are built by these factories, never at import, so a ClientApp never creates ``fl`` series and the
aggregator never creates ``edge`` series. Without the variable (tests, simulation, the CLI) metrics
live in an ordinary in-memory registry.

Examples
--------
Device agent (long-lived)::

    telemetry.configure_multiprocess("/run/iotad/metrics")   # same dir as the SuperNode's env
    server = telemetry.serve_metrics(9401, "0.0.0.0")
    dev = telemetry.DeviceTelemetry("device-1")
    dev.prime(reject_reasons=REJECT_REASONS)
    dev.model_loaded(model_round=3, threshold=0.012)
    dev.scored(errors, flagged, seconds=0.004)

ClientApp handler (one process per message; ``PROMETHEUS_MULTIPROC_DIR`` inherited)::

    dev = telemetry.DeviceTelemetry(telemetry.device_name())
    dev.clientapp_started()
    dev.trained(loss=res.epoch_losses[-1], samples=res.samples, epochs=len(res.epoch_losses),
                seconds=res.seconds)

Aggregator: the launcher serves and tracks runs, the ServerApp process records rounds::

    telemetry.configure_multiprocess("/run/iotad/metrics")          # launcher
    telemetry.serve_metrics(9400, "0.0.0.0")
    agg = telemetry.AggregatorTelemetry()
    agg.run_started(planned_rounds=10)            # or resumed_reason="superlink_restart"
    ...
    agg.run_finished()

    agg = telemetry.AggregatorTelemetry()                           # ServerApp, per round
    agg.round_started(rnd)
    agg.round_finished(seconds=dt, participating=n_ok, failed={"error": n_err, "missing": n_lost},
                       train_loss=loss, model_bytes=nbytes)
    agg.evaluated(evaluation.metrics_from_histograms(hists, threshold))
"""
