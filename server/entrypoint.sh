#!/bin/sh
# Aggregator container: `iotad aggregator` (SuperLink with TLS + node auth + state database, run launcher
# with resume-from-checkpoint, /metrics). Every setting comes from the environment; see server/README.md.
# All writes go under IOTAD_STATE_DIR (the root filesystem is read-only).
#
# `entrypoint.sh init` (the compose one-shot service `init`): create what is missing, keep what exists.
#   IOTAD_INIT_CERTS (/certs): scripts/gen-certs.sh for IOTAD_DEVICES devices (device-0..N-1), aggregator
#     SANs IOTAD_CERT_DNS (space separated, default "aggregator"; 127.0.0.1 and localhost always), then
#     pubkeys/<name>/node_key.pub of every devices/<name>/ (the public keys alone, for IOTAD_KEYS_DIR),
#     aggregator/{ca.crt,server.pem,server.key} and devices/ca.crt (the mounts of docker-compose.yml).
#   IOTAD_INIT_DATA (/data): <name>/traffic.csv per device, `iotad synth --story` (IOTAD_ROWS_PER_DEVICE,
#     IOTAD_SEED), and <name>/story.csv, the capture the device replays (normal traffic, 3 attack bursts).
#   Run as root (the bind-mounted ./certs may belong to anyone), it hands both trees to uid 10001, and
#   the `targets` volume (IOTAD_INIT_TARGETS, /targets) where the services write their Prometheus targets.
# IOTAD_TARGETS_DIR (compose.hostnet.yml): the aggregator writes aggregator.json (file_sd) there.
set -eu
if [ "${1:-}" = init ]; then
    certs="${IOTAD_INIT_CERTS:-/certs}" data="${IOTAD_INIT_DATA:-/data}" n="${IOTAD_DEVICES:-3}"
    set --
    for name in ${IOTAD_CERT_DNS:-aggregator}; do set -- "$@" --dns "$name"; done
    "${IOTAD_GEN_CERTS:-gen-certs.sh}" "$@" --devices "$n" "$certs"
    # pubkeys/ is updated in place: a running aggregator's bind mount keeps pointing at this directory.
    mkdir -p "$certs/pubkeys"
    for key in "$certs"/devices/*/node_key.pub; do   # every device, also those made by make-device-bundle.sh
        name=$(basename "$(dirname "$key")")
        mkdir -p "$certs/pubkeys/$name" && cp "$key" "$certs/pubkeys/$name/node_key.pub.tmp" \
            && mv "$certs/pubkeys/$name/node_key.pub.tmp" "$certs/pubkeys/$name/node_key.pub"
    done
    for dir in "$certs"/pubkeys/*/; do              # devices whose key is gone
        name=$(basename "$dir")
        [ -f "$certs/devices/$name/node_key.pub" ] || rm -rf "$certs/pubkeys/$name"
    done
    # What each service mounts, as directories (compose checks a file secret before `init` could make
    # it; a directory bind is resolved when the container starts): aggregator/ (its TLS files) and the
    # CA beside the device keys. Hard links keep one copy (re-linked on every run).
    mkdir -p "$certs/aggregator"
    for f in ca.crt server.pem server.key; do
        ln -f "$certs/$f" "$certs/aggregator/$f" 2>/dev/null || cp -f "$certs/$f" "$certs/aggregator/$f"
    done
    ln -f "$certs/ca.crt" "$certs/devices/ca.crt" 2>/dev/null || cp -f "$certs/ca.crt" "$certs/devices/ca.crt"
    i=0 missing=0
    while [ "$i" -lt "$n" ]; do [ -s "$data/device-$i/traffic.csv" ] || missing=1; i=$((i + 1)); done
    if [ "$missing" = 1 ]; then
        rm -rf "$data/.synth"
        iotad synth --devices "$n" --rows-per-device "${IOTAD_ROWS_PER_DEVICE:-20000}" \
            --seed "${IOTAD_SEED:-0}" --story --out "$data/.synth"
        i=0
        while [ "$i" -lt "$n" ]; do
            [ -s "$data/device-$i/traffic.csv" ] || { rm -rf "$data/device-$i"; mv "$data/.synth/device-$i" "$data/"; }
            i=$((i + 1))
        done
        cp "$data/.synth/SYNTHETIC.md" "$data/.synth/dataset.json" "$data/" 2>/dev/null || :
        rm -rf "$data/.synth"
        echo "created  $data/device-0 .. device-$((n - 1)) (missing ones)"
    else
        echo "kept     $data/device-0 .. device-$((n - 1))"
    fi
    targets="${IOTAD_INIT_TARGETS:-/targets}"   # file_sd targets the services write (host network)
    if [ "$(id -u)" = 0 ]; then
        chown -R 10001:10001 "$certs" "$data"
        if [ -d "$targets" ]; then chown 10001:10001 "$targets"; fi
    fi
    exit 0
fi
: "${IOTAD_STATE_DIR:=/var/lib/iotad}"
mkdir -p "$IOTAD_STATE_DIR/tmp"
export TMPDIR="$IOTAD_STATE_DIR/tmp"
if [ -n "${IOTAD_TARGETS_DIR:-}" ]; then   # Prometheus file_sd (compose.hostnet.yml): where to scrape us
    printf '[{"targets": ["%s:%s"]}]\n' "${IOTAD_METRICS_HOST:-127.0.0.1}" "${IOTAD_METRICS_PORT:-9400}" \
        >"$IOTAD_TARGETS_DIR/.aggregator.json.tmp" && mv "$IOTAD_TARGETS_DIR/.aggregator.json.tmp" "$IOTAD_TARGETS_DIR/aggregator.json"
fi
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
