#!/usr/bin/env bash
# Make the bundle one edge device needs to join an aggregator (docs/edge-devices.md).
#
#   make-device-bundle.sh [options] NAME OUTDIR
#
# OUTDIR/iotad-device-NAME/ and OUTDIR/iotad-device-NAME.tar.gz (+ .sha256) holding
#   ca.crt                 the federation CA (the device trusts only aggregators it signed)
#   node_key, node_key.pub this device's key pair, nothing of any other device (node_key: mode 600,
#                          uid/gid 10001 = the container user, in the tarball whoever makes it)
#   device.env             client/device.env.example with IOTAD_DEVICE and IOTAD_SUPERLINK filled in
#   compose.yml            this device alone: image iotad-client, restart unless-stopped, CA and key as
#                          compose secrets, read-only root, no capabilities, state in a named volume
#   data/                  the device's traffic CSV goes here (data/traffic.csv), or --data copies one
#   README.txt             the three commands to run on the device
#
# Options
#   --certs DIR            certificates of the federation (default ./certs: what the compose `init`
#                          service or scripts/gen-certs.sh wrote). A device without a key pair there gets
#                          one (ssh-keygen, as gen-certs.sh makes them), also copied to DIR/pubkeys/NAME/;
#                          the aggregator registers it when it next starts.
#   --aggregator HOST:PORT the aggregator's Fleet API as the device reaches it (default aggregator:9092).
#                          HOST must be a SAN of the aggregator certificate (gen-certs.sh --dns HOST).
#   --network host|bridge  the device container's network (default host: nothing is published; the
#                          SuperNode dials out, /metrics on the host's 9401)
#   --data CSV             copy CSV to data/traffic.csv
#   --version V            image tag (default: pyproject version)
#   --no-tar               only the directory
# Private keys never leave the certs directory except NAME's own node_key into its bundle.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

certs=./certs
aggregator=aggregator:9092
network=host
data=""
tar=1
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)
args=()
while (($#)); do
  case "$1" in
    --certs) certs="$2"; shift 2 ;;
    --aggregator) aggregator="$2"; shift 2 ;;
    --network) network="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --no-tar) tar=0; shift ;;
    -h|--help) usage ;;
    -*) echo "make-device-bundle.sh: unknown option $1" >&2; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ ${#args[@]} -eq 2 ]] || usage
name=${args[0]}
outdir=${args[1]}
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "bad device name '$name'" >&2; exit 2; }
[[ "$aggregator" == *:* ]] || { echo "--aggregator needs HOST:PORT" >&2; exit 2; }
[[ "$network" == host || "$network" == bridge ]] || { echo "--network host|bridge" >&2; exit 2; }
[[ -r "$certs/ca.crt" ]] || {
  echo "no readable $certs/ca.crt: run 'docker compose up -d' (its init service) or scripts/gen-certs.sh first" >&2
  echo "(files written by the compose init service belong to uid 10001: run this script with sudo)" >&2
  exit 1
}
[[ -z "$data" || -r "$data" ]] || { echo "cannot read $data" >&2; exit 1; }

keydir="$certs/devices/$name"
if [[ ! -s "$keydir/node_key" || ! -s "$keydir/node_key.pub" ]]; then
  command -v ssh-keygen >/dev/null || { echo "ssh-keygen not found (openssh-client)" >&2; exit 1; }
  mkdir -p "$keydir"
  rm -f "$keydir/node_key" "$keydir/node_key.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "iotad-$name" -f "$keydir/node_key"
  mkdir -p "$certs/pubkeys/$name"
  cp "$keydir/node_key.pub" "$certs/pubkeys/$name/"
  if [[ $(id -u) -eq 0 && "$(stat -c %u "$certs")" == 10001 ]]; then
    chown -R 10001:10001 "$keydir" "$certs/pubkeys/$name"
  fi
  echo "created  $keydir/node_key (+ .pub, and $certs/pubkeys/$name/): restart the aggregator to register it" >&2
fi
[[ -r "$keydir/node_key" ]] || { echo "cannot read $keydir/node_key (belongs to uid 10001?): use sudo" >&2; exit 1; }

bundle="$outdir/iotad-device-$name"
rm -rf "$bundle"
mkdir -p "$bundle/data"
umask 077
cp "$certs/ca.crt" "$keydir/node_key.pub" "$bundle/"
cp "$keydir/node_key" "$bundle/node_key"
chmod 644 "$bundle/ca.crt" "$bundle/node_key.pub"
chmod 600 "$bundle/node_key"
chmod 755 "$bundle" "$bundle/data"
[[ -z "$data" ]] || { cp "$data" "$bundle/data/traffic.csv"; chmod 644 "$bundle/data/traffic.csv"; }

sed -e "s|^IOTAD_DEVICE=.*|IOTAD_DEVICE=$name|" \
    -e "s|^IOTAD_SUPERLINK=.*|IOTAD_SUPERLINK=$aggregator|" \
    -e "s|^IOTAD_ROOT_CERTIFICATES=.*|IOTAD_ROOT_CERTIFICATES=/run/secrets/ca.crt|" \
    -e "s|^IOTAD_PRIVATE_KEY=.*|IOTAD_PRIVATE_KEY=/run/secrets/node_key|" \
    "$ROOT/client/device.env.example" >"$bundle/device.env"
chmod 644 "$bundle/device.env"

if [[ "$network" == host ]]; then
  net='    network_mode: host'
else
  net='    ports:
      - "9401:9401"   # /metrics for Prometheus; nothing else is published (the device dials out)'
fi
cat >"$bundle/compose.yml" <<EOF
# iotad device $name: Flower SuperNode + detection agent (client/entrypoint.sh), settings in device.env.
#   docker load -i iotad-client_${version}_arm64.tar.gz     # once (scripts/export-device-image.sh)
#   docker compose up -d && docker compose logs -f
name: iotad-$name
services:
  device:
    image: iotad-client:\${IOTAD_VERSION:-$version}
    pull_policy: never
    restart: unless-stopped
    env_file: [device.env]
$net
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    tmpfs:
      - /tmp:size=256m,mode=1777
    secrets:
      - {source: ca_crt, target: ca.crt}
      - {source: node_key, target: node_key}
    volumes:
      - ./data:/data:ro
      - state:/var/lib/iotad
    stop_grace_period: 30s
    logging:
      driver: json-file
      options: {max-size: "10m", max-file: "3"}
secrets:
  ca_crt:
    file: ./ca.crt
  node_key:
    file: ./node_key    # uid 10001 (the container user), mode 600
volumes:
  state:
EOF
cat >"$bundle/README.txt" <<EOF
iotad device bundle: $name -> aggregator $aggregator (image iotad-client:$version)

On the device (Docker + compose v2 installed; see docs/edge-devices.md):
  sudo tar -xzf iotad-device-$name.tar.gz -C /opt          # as root: node_key stays uid 10001, mode 600
  docker load -i iotad-client_${version}_arm64.tar.gz      # the image (scripts/export-device-image.sh)
  cp /path/to/traffic.csv /opt/iotad-device-$name/data/    # unless the bundle has data/traffic.csv
  cd /opt/iotad-device-$name && docker compose up -d
Check: docker compose logs device | grep "SuperNode ID"; curl -s localhost:9401/metrics | grep model_round
EOF
chmod 644 "$bundle/compose.yml" "$bundle/README.txt"
if [[ $(id -u) -eq 0 ]]; then chown 10001:10001 "$bundle/node_key"; fi

if [[ $tar -eq 1 ]]; then
  tarball="$outdir/iotad-device-$name.tar.gz"
  # node_key belongs to the container user in the archive, whoever makes it (root extracts it so).
  tar -C "$outdir" --numeric-owner --owner=0 --group=0 --exclude="iotad-device-$name/node_key" \
      -cf "$outdir/.bundle-$name.tar" "iotad-device-$name"
  tar -C "$outdir" --numeric-owner --owner=10001 --group=10001 \
      -rf "$outdir/.bundle-$name.tar" "iotad-device-$name/node_key"
  gzip -9 -c "$outdir/.bundle-$name.tar" >"$tarball"
  rm -f "$outdir/.bundle-$name.tar"
  chmod 600 "$tarball"
  (cd "$outdir" && sha256sum "$(basename "$tarball")" >"$(basename "$tarball").sha256")
  echo "$tarball"
fi
echo "$bundle"
