#!/bin/sh
# Device container: `iotad device` (flower-supernode + the device agent, supervised together; the container
# exits non-zero if either dies, so `restart: unless-stopped` brings both back). Settings come from the
# environment (client/device.env.example). All writes go under IOTAD_STATE_DIR (read-only root filesystem).
set -eu
: "${IOTAD_STATE_DIR:=/var/lib/iotad}"
: "${IOTAD_DEVICE:?set IOTAD_DEVICE to the name this device was registered under}"
: "${IOTAD_SUPERLINK:?set IOTAD_SUPERLINK to the Fleet API of the aggregator, e.g. aggregator:9092}"
mkdir -p "$IOTAD_STATE_DIR/tmp"
export TMPDIR="$IOTAD_STATE_DIR/tmp"
set -- ${IOTAD_MAX_RETRIES:+--max-retries "$IOTAD_MAX_RETRIES"} ${IOTAD_TAIL:+--tail "$IOTAD_TAIL"} "$@"
exec iotad ${IOTAD_VERBOSE:+-v} device \
    --state-dir "$IOTAD_STATE_DIR" \
    --device-name "$IOTAD_DEVICE" \
    --superlink "$IOTAD_SUPERLINK" \
    --root-certificates "${IOTAD_ROOT_CERTIFICATES:-/run/secrets/ca.crt}" \
    --private-key "${IOTAD_PRIVATE_KEY:-/run/secrets/node_key}" \
    --data-path "${IOTAD_DATA_PATH:-/data/traffic.csv}" \
    --supernode-port "${IOTAD_SUPERNODE_PORT:-9094}" \
    --metrics-host "${IOTAD_METRICS_HOST:-0.0.0.0}" \
    --metrics-port "${IOTAD_METRICS_PORT:-9401}" \
    --rate "${IOTAD_REPLAY_RATE:-100}" \
    --log-dir "${IOTAD_LOG_DIR:--}" \
    --agent-args "${IOTAD_AGENT_ARGS:-}" \
    "$@"
