#!/bin/sh
# Aggregator container: `iotad aggregator` (SuperLink with TLS + node auth + state database, run launcher
# with resume-from-checkpoint, /metrics). Every setting comes from the environment; see server/README.md.
# All writes go under IOTAD_STATE_DIR (the root filesystem is read-only).
set -eu
: "${IOTAD_STATE_DIR:=/var/lib/iotad}"
mkdir -p "$IOTAD_STATE_DIR/tmp"
export TMPDIR="$IOTAD_STATE_DIR/tmp"
exec iotad ${IOTAD_VERBOSE:+-v} aggregator \
    --state-dir "$IOTAD_STATE_DIR" \
    --certs-dir "${IOTAD_CERTS_DIR:-/run/secrets/iotad}" \
    --keys-dir "${IOTAD_KEYS_DIR:-/run/secrets/iotad/devices}" \
    --app-dir "${IOTAD_APP_DIR:-/opt/iotad/app}" \
    --fleet-address "${IOTAD_FLEET_ADDRESS:-0.0.0.0:9092}" \
    --control-port "${IOTAD_CONTROL_PORT:-9093}" \
    --metrics-host "${IOTAD_METRICS_HOST:-0.0.0.0}" \
    --metrics-port "${IOTAD_METRICS_PORT:-9400}" \
    --rounds "${IOTAD_ROUNDS:-5}" \
    --min-nodes "${IOTAD_MIN_NODES:-2}" \
    --local-epochs "${IOTAD_LOCAL_EPOCHS:-2}" \
    --join-timeout "${IOTAD_JOIN_TIMEOUT:-600}" \
    --run-timeout "${IOTAD_RUN_TIMEOUT:-7200}" \
    --max-attempts "${IOTAD_MAX_ATTEMPTS:-5}" \
    --run-config "${IOTAD_RUN_CONFIG:-}" \
    "$@"
