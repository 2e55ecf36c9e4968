#!/bin/sh
# Device container: `iotad device` (flower-supernode + the device agent, supervised together; the container
# exits non-zero if either dies, so `restart: unless-stopped` brings both back). Settings come from the
# environment (client/device.env.example). All writes go under IOTAD_STATE_DIR (read-only root filesystem).
#
# IOTAD_DEVICE=auto (docker-compose.yml, a scaled `device` service): the container claims the first free
# identity device-<k> (k < IOTAD_DEVICES) with an atomic mkdir in IOTAD_CLAIM_DIR (a volume shared by the
# replicas), keyed by its container id, so a restarted container keeps its identity. The claim is released
# when the container stops and is taken over when its holder stopped refreshing it for 2 minutes (killed).
# Then: key IOTAD_KEYS_DIR/device-<k>/node_key, data IOTAD_DATA_DIR/device-<k>/traffic.csv (the replay:
# story.csv beside it when there is one, IOTAD_REPLAY_PATH otherwise), state
# IOTAD_STATE_DIR/device-<k>, and with IOTAD_PORTS_BY_INDEX=1 (host networking) the SuperNode and metrics
# ports are IOTAD_SUPERNODE_PORT + k and IOTAD_METRICS_PORT + k. The metrics port in use is written to
# /tmp/iotad-metrics-port for the compose health check. With IOTAD_TARGETS_DIR (compose.hostnet.yml) the
# device also writes its Prometheus file_sd target there, <name>.json.
set -eu
: "${IOTAD_STATE_DIR:=/var/lib/iotad}"
: "${IOTAD_DEVICE:?set IOTAD_DEVICE to the name this device was registered under}"
: "${IOTAD_SUPERLINK:?set IOTAD_SUPERLINK to the Fleet API of the aggregator, e.g. aggregator:9092}"

claim=""
if [ "$IOTAD_DEVICE" = auto ]; then
    : "${IOTAD_DEVICES:?IOTAD_DEVICE=auto needs IOTAD_DEVICES (how many identities exist)}"
    claims="${IOTAD_CLAIM_DIR:-$IOTAD_STATE_DIR/claims}"
    mkdir -p "$claims"
    # The container id (stable across restarts of this container; the hostname is the host's own
    # with host networking): docker bind-mounts /var/lib/docker/containers/<id>/hostname.
    me=$(sed -n 's#.*/containers/\([0-9a-f]\{64\}\)/hostname .*#\1#p' /proc/self/mountinfo | head -n 1)
    me="${me:-$(cat /etc/hostname)}"
    deadline=$(($(date +%s) + ${IOTAD_CLAIM_TIMEOUT:-300}))
    k=""
    while [ -z "$k" ]; do
        i=0
        while [ "$i" -lt "$IOTAD_DEVICES" ]; do          # 1. my own claim (container restart)
            if [ "$(cat "$claims/device-$i/owner" 2>/dev/null)" = "$me" ]; then k=$i; break; fi
            i=$((i + 1))
        done
        i=0
        while [ -z "$k" ] && [ "$i" -lt "$IOTAD_DEVICES" ]; do   # 2. a free one, 3. a stale one
            c="$claims/device-$i"
            if [ -n "$(find "$c" -maxdepth 0 -mmin +2 2>/dev/null)" ] \
               && mv "$c" "$claims/.stale-$i-$me" 2>/dev/null; then
                rm -rf "$claims/.stale-$i-$me"
            fi
            if mkdir "$c" 2>/dev/null; then echo "$me" >"$c/owner"; k=$i; fi
            i=$((i + 1))
        done
        if [ -z "$k" ]; then
            [ "$(date +%s)" -lt "$deadline" ] || { echo "no free device identity (IOTAD_DEVICES=$IOTAD_DEVICES)" >&2; exit 1; }
            sleep 5
        fi
    done
    claim="$claims/device-$k"
    IOTAD_DEVICE="device-$k"
    IOTAD_STATE_DIR="$IOTAD_STATE_DIR/$IOTAD_DEVICE"
    IOTAD_PRIVATE_KEY="${IOTAD_KEYS_DIR:-/run/iotad/keys}/$IOTAD_DEVICE/node_key"
    IOTAD_DATA_PATH="${IOTAD_DATA_DIR:-/data}/$IOTAD_DEVICE/traffic.csv"
    # The demo replays the story capture when init made one (normal traffic with a few attack bursts).
    story="${IOTAD_DATA_DIR:-/data}/$IOTAD_DEVICE/story.csv"
    if [ -z "${IOTAD_REPLAY_PATH:-}" ] && [ -s "$story" ]; then IOTAD_REPLAY_PATH=$story; fi
    if [ "${IOTAD_PORTS_BY_INDEX:-0}" = 1 ]; then
        IOTAD_SUPERNODE_PORT=$((${IOTAD_SUPERNODE_PORT:-9094} + k))
        IOTAD_METRICS_PORT=$((${IOTAD_METRICS_PORT:-9401} + k))
    fi
    export IOTAD_DEVICE
    echo "claimed identity $IOTAD_DEVICE (container ${me%"${me#????????????}"})" >&2
    # Heartbeat: the claim's mtime; a claim not refreshed for 2 minutes is taken over.
    (while sleep 30; do touch "$claim" 2>/dev/null || exit 0; done) &
    beat=$!
fi
echo "${IOTAD_METRICS_PORT:-9401}" >/tmp/iotad-metrics-port 2>/dev/null || :
target=""
if [ -n "${IOTAD_TARGETS_DIR:-}" ]; then   # Prometheus file_sd (compose.hostnet.yml): where to scrape us
    t="$IOTAD_TARGETS_DIR/$IOTAD_DEVICE.json"
    target=$t
    printf '[{"targets": ["%s:%s"], "labels": {"device": "%s"}}]\n' "${IOTAD_METRICS_HOST:-127.0.0.1}" \
        "${IOTAD_METRICS_PORT:-9401}" "$IOTAD_DEVICE" >"$t.tmp" && mv "$t.tmp" "$t"
fi

mkdir -p "$IOTAD_STATE_DIR/tmp"
export TMPDIR="$IOTAD_STATE_DIR/tmp"
set -- ${IOTAD_MAX_RETRIES:+--max-retries "$IOTAD_MAX_RETRIES"} ${IOTAD_TAIL:+--tail "$IOTAD_TAIL"} \
    ${IOTAD_REPLAY_PATH:+--replay-path "$IOTAD_REPLAY_PATH"} "$@"
set -- ${IOTAD_VERBOSE:+-v} device \
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
[ -n "$claim" ] || exec iotad "$@"

# With a claim: stay the parent, forward SIGTERM/SIGINT, release the claim on the way out.
iotad "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
rc=0
wait "$child" || rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child" || rc=$?; done
kill "$beat" 2>/dev/null || :
rm -rf "$claim"
# Stopped on purpose (exit 0: scaled down, compose stop): no target left for Prometheus to report down.
# After a crash the target stays, so the device-down alert sees it.
if [ -n "$target" ] && [ "$rc" = 0 ]; then rm -f "$target"; fi
exit "$rc"
