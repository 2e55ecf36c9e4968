#!/usr/bin/env bash
# Export the device (client) image of one arch as a gzipped `docker save` archive, for sites and
# devices without a registry (load it with `docker load -i FILE` or `gunzip -c FILE | docker load`).
#
#   scripts/export-device-image.sh [amd64|arm64] [--out DIR] [--image REF] [--keep-name] [--force]
#
# Input:  iotad-client:<version> (host arch) or iotad-client:<version>-<arch> (scripts/build-images.sh)
# Output: DIR/iotad-client_<version>_<arch>.tar.gz (DIR defaults to dist/) plus .sha256, and .id (the
#         image ID it holds: a later run with the same image skips the export).
# Inside the archive the image is named iotad-client:<version> whatever its arch (a Pi loads it under
# the name the device compose file uses); --keep-name keeps the local name instead.
# Uses pigz when installed (parallel), else gzip.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCH=""
OUT="$ROOT/dist"
IMAGE=""
KEEP=0
FORCE=0
while (($#)); do
  case "$1" in
    amd64|arm64) ARCH="$1" ;;
    --out) OUT="$2"; shift ;;
    --image) IMAGE="$2"; shift ;;
    --keep-name) KEEP=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
ARCH="${ARCH:-$HOST_ARCH}"
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)
TAG="${IOTAD_IMAGE_TAG:-${VERSION:-dev}}"
NAME="iotad-client:$TAG"
if [[ -z "$IMAGE" ]]; then
  if [[ "$ARCH" == "$HOST_ARCH" ]]; then IMAGE="$NAME"; else IMAGE="$NAME-$ARCH"; fi
fi

log() { printf '[export-device-image %s] %s\n' "$ARCH" "$*" >&2; }

docker image inspect "$IMAGE" >/dev/null 2>&1 \
  || { echo "$IMAGE not found: build it with scripts/build-images.sh$([[ $ARCH != "$HOST_ARCH" ]] && echo " --$ARCH")" >&2; exit 1; }
got=$(docker image inspect -f '{{.Architecture}}' "$IMAGE")
[[ "$got" == "$ARCH" ]] || { echo "$IMAGE is $got, not $ARCH" >&2; exit 1; }
ID=$(docker image inspect -f '{{.Id}}' "$IMAGE")

mkdir -p "$OUT"
FILE="$OUT/iotad-client_${TAG}_${ARCH}.tar.gz"
if [[ $FORCE -eq 0 && -s "$FILE" && -f "$FILE.id" && "$(cat "$FILE.id")" == "$ID" ]]; then
  log "$FILE holds $IMAGE already: skipping"
  exit 0
fi

if command -v pigz >/dev/null 2>&1; then GZIP_CMD=(pigz -6); else GZIP_CMD=(gzip -6); fi
RENAME="$NAME"
[[ $KEEP -eq 1 ]] && RENAME="$IMAGE"

log "docker save $IMAGE ($ID) as $RENAME | ${GZIP_CMD[0]} -> $FILE"
tmp="$FILE.partial"
rm -f "$tmp" "$FILE.id"
# Rename in the archive's manifest (stream edit, no second copy on disk).
docker save "$IMAGE" | python3 -c '
import io, json, sys, tarfile
old, new = sys.argv[1], sys.argv[2]
repo, _, tag = new.rpartition(":")
src = tarfile.open(fileobj=sys.stdin.buffer, mode="r|")
dst = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT)
for ti in src:
    data = src.extractfile(ti) if ti.isfile() else None
    if ti.name == "manifest.json":
        manifest = json.load(data)
        for entry in manifest:
            entry["RepoTags"] = [new]
        raw = json.dumps(manifest).encode()
    elif ti.name == "repositories":
        repos = json.load(data)
        layer = next(iter(next(iter(repos.values())).values()))
        raw = json.dumps({repo: {tag: layer}}).encode()
    else:
        dst.addfile(ti, data)
        continue
    ti.size = len(raw)
    dst.addfile(ti, io.BytesIO(raw))
dst.close()
' "$IMAGE" "$RENAME" | "${GZIP_CMD[@]}" >"$tmp"
mv "$tmp" "$FILE"
(cd "$OUT" && sha256sum "$(basename "$FILE")" >"$(basename "$FILE").sha256")
echo "$ID" >"$FILE.id"
log "done: $FILE ($(du -h "$FILE" | cut -f1)); on the device: docker load -i $(basename "$FILE")"
