#!/usr/bin/env bash
# Build the iotad container images.
#
# Air-gapped (default; no registry, no index inside the build):
#   scripts/build-images.sh                    amd64 server + device (client) + prometheus images
#   scripts/build-images.sh --arm64            ... plus the arm64 device image (QEMU on x86)
#   scripts/build-images.sh --arm64-only       only the arm64 device image
#   scripts/build-images.sh --arm64-server     also an arm64 server image (with --arm64/--arm64-only)
#   Steps: install-docker.sh -> build-base-image.sh <arch> -> build-wheelhouse.sh <arch> ->
#          DOCKER_BUILDKIT=0 docker build --network host (classic builder; dockerd runs without a bridge)
#          from a staged context holding only wheelhouse/<arch>.
#
# With a registry (normal multi-arch build; needs docker buildx and the official base images):
#   scripts/build-images.sh --buildx [--platforms linux/amd64,linux/arm64] [--push --registry REG/PREFIX]
#   Without --push each platform is built and loaded separately (a multi-platform result cannot be
#   loaded into the classic image store).
#
# Tags: iotad-server:<version>, iotad-client:<version>, iotad-prometheus:<version> (amd64; version from
# pyproject.toml, override with IOTAD_IMAGE_TAG); images of a foreign arch get a -<arch> suffix
# (iotad-client:<version>-arm64).
# scripts/export-device-image.sh arm64 saves the latter under the plain name for the device.
# Other options:
#   --stub-entrypoints  build even when server/ or client/entrypoint.sh do not exist yet (a stub that
#                       exits 64): only for testing the build path
#   --no-cache          pass --no-cache to docker build
#   --keep-build-cache  keep the builder stage's untagged image (~1.6 GB; faster rebuilds). By default
#                       it is pruned at the end, so a build leaves no dangling image behind.
# Environment: IOTAD_BUILD_DIR (staging, default /var/tmp/iotad-build-ctx), IOTAD_BUILD_LOG_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPTS="$ROOT/scripts"

BUILD_AMD64=1
BUILD_ARM64=0
ARM64_SERVER=0
MODE=airgap
PLATFORMS="linux/amd64,linux/arm64"
PUSH=0
REGISTRY=""
STUB=0
NO_CACHE=()
KEEP_CACHE=0
while (($#)); do
  case "$1" in
    --arm64) BUILD_ARM64=1 ;;
    --arm64-only) BUILD_ARM64=1; BUILD_AMD64=0 ;;
    --arm64-server) ARM64_SERVER=1 ;;
    --buildx) MODE=buildx ;;
    --platforms) PLATFORMS="$2"; shift ;;
    --push) PUSH=1 ;;
    --registry) REGISTRY="${2%/}/"; shift ;;
    --stub-entrypoints) STUB=1 ;;
    --no-cache) NO_CACHE=(--no-cache) ;;
    --keep-build-cache) KEEP_CACHE=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)
TAG="${IOTAD_IMAGE_TAG:-${VERSION:-dev}}"
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
STAGE_ROOT="${IOTAD_BUILD_DIR:-/var/tmp/iotad-build-ctx}"
LOG_DIR="${IOTAD_BUILD_LOG_DIR:-$STAGE_ROOT/logs}"
mkdir -p "$LOG_DIR"

log() { printf '[build-images] %s\n' "$*" >&2; }
SUMMARY=()
timed() {  # timed LABEL cmd...: run, record the wall time
  local label=$1 t0 rc=0
  shift
  t0=$(date +%s)
  "$@" || rc=$?
  local dt=$(($(date +%s) - t0))
  SUMMARY+=("$(printf '%-34s %4d s%s' "$label" "$dt" "$([[ $rc -ne 0 ]] && echo "  FAILED ($rc)")")")
  log "$label: ${dt}s"
  return $rc
}
image_tag() {  # image_tag NAME ARCH
  if [[ "$2" == "$HOST_ARCH" ]]; then echo "${REGISTRY}iotad-$1:$TAG"; else echo "${REGISTRY}iotad-$1:$TAG-$2"; fi
}

check_entrypoints() {  # check_entrypoints DIR: fail (or stub) when an entrypoint is missing
  local dir=$1 role
  for role in server client; do
    if [[ ! -f "$dir/$role/entrypoint.sh" ]]; then
      if [[ $STUB -eq 1 ]]; then
        log "warning: $role/entrypoint.sh missing: using a stub (--stub-entrypoints)"
        mkdir -p "$dir/$role"
        printf '#!/bin/sh\n# stub from scripts/build-images.sh --stub-entrypoints\nif [ "$#" -gt 0 ]; then exec "$@"; fi\necho "iotad: %s entrypoint not built into this image" >&2\nexit 64\n' "$role" \
          >"$dir/$role/entrypoint.sh"
        chmod 0755 "$dir/$role/entrypoint.sh"
      else
        echo "$role/entrypoint.sh does not exist (use --stub-entrypoints to test the build path)" >&2
        return 1
      fi
    fi
  done
}

# Context for one arch: the allowlisted files plus wheelhouse/<arch> only (hard links, no copy when
# the staging dir is on the same file system). The repo's .dockerignore still applies.
stage_context() {  # stage_context ARCH -> prints the dir
  local arch=$1 dir="$STAGE_ROOT/$1"
  rm -rf "$dir"
  mkdir -p "$dir/wheelhouse"
  local f
  for f in pyproject.toml README.md .dockerignore Dockerfile.server Dockerfile.client Dockerfile.prometheus iotad server client; do
    [[ -e "$ROOT/$f" ]] && cp -a "$ROOT/$f" "$dir/"
  done
  mkdir -p "$dir/scripts" && cp -a "$ROOT/scripts/gen-certs.sh" "$dir/scripts/"  # Dockerfile.server
  cp -al "$ROOT/wheelhouse/$arch" "$dir/wheelhouse/" 2>/dev/null || cp -a "$ROOT/wheelhouse/$arch" "$dir/wheelhouse/"
  find "$dir" -name __pycache__ -type d -prune -exec rm -rf {} +
  check_entrypoints "$dir"
  echo "$dir"
}

build_one() {  # build_one NAME ARCH CONTEXT
  local name=$1 arch=$2 ctx=$3 tag
  tag=$(image_tag "$name" "$arch")
  log "building $tag (linux/$arch) -> log $LOG_DIR/$name-$arch.log"
  local platform=()
  # Only a foreign arch needs --platform (it also makes the classic builder pick the arm64 base).
  [[ "$arch" != "$HOST_ARCH" ]] && platform=(--platform "linux/$arch")
  if ! DOCKER_BUILDKIT=0 docker build --network host "${platform[@]}" "${NO_CACHE[@]}" \
      --build-arg "BASE_IMAGE=iotad-base:py3.11-bookworm-$arch" \
      --build-arg "TARGETARCH=$arch" \
      -f "$ctx/Dockerfile.$name" -t "$tag" "$ctx" >"$LOG_DIR/$name-$arch.log" 2>&1; then
    tail -n 40 "$LOG_DIR/$name-$arch.log" >&2
    return 1
  fi
  local got
  got=$(docker image inspect -f '{{.Architecture}}' "$tag")
  [[ "$got" == "$arch" ]] || { echo "$tag is $got, expected $arch" >&2; return 1; }
}

size_of() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

if [[ "$MODE" == buildx ]]; then
  docker buildx version >/dev/null 2>&1 || { echo "--buildx needs the docker buildx plugin" >&2; exit 1; }
  [[ $PUSH -eq 0 || -n "$REGISTRY" ]] || { echo "--push needs --registry" >&2; exit 1; }
  IFS=, read -r -a plats <<<"$PLATFORMS"
  for p in "${plats[@]}"; do timed "wheelhouse ${p#linux/}" "$SCRIPTS/build-wheelhouse.sh" "${p#linux/}"; done
  check_entrypoints "$ROOT"
  for name in server client; do
    if [[ $PUSH -eq 1 ]]; then
      timed "buildx $name ($PLATFORMS) push" docker buildx build --platform "$PLATFORMS" \
        -f "$ROOT/Dockerfile.$name" -t "${REGISTRY}iotad-$name:$TAG" --push "$ROOT"
    else
      for p in "${plats[@]}"; do
        timed "buildx $name ${p#linux/}" docker buildx build --platform "$p" --load \
          -f "$ROOT/Dockerfile.$name" -t "$(image_tag "$name" "${p#linux/}")" "$ROOT"
      done
    fi
  done
  printf '%s\n' "${SUMMARY[@]}"
  exit 0
fi

# Air-gapped path.
docker_args=()
[[ $BUILD_ARM64 -eq 1 ]] && docker_args+=(--arm64)
timed "install-docker" "$SCRIPTS/install-docker.sh" "${docker_args[@]}"

ARCHES=()
[[ $BUILD_AMD64 -eq 1 ]] && ARCHES+=(amd64)
[[ $BUILD_ARM64 -eq 1 ]] && ARCHES+=(arm64)
for arch in "${ARCHES[@]}"; do
  timed "base image $arch" "$SCRIPTS/build-base-image.sh" "$arch"
  timed "wheelhouse $arch" "$SCRIPTS/build-wheelhouse.sh" "$arch"
  ctx=$(stage_context "$arch")
  names=(client)
  if [[ "$arch" == amd64 || $ARM64_SERVER -eq 1 ]]; then names=(server client); fi
  [[ "$arch" != amd64 ]] || names+=(prometheus)  # the monitoring profile's Prometheus (Debian package)
  for name in "${names[@]}"; do
    timed "image $name $arch" build_one "$name" "$arch" "$ctx"
  done
done

# The classic builder keeps each builder stage as an untagged image (the cache shared by the server and
# client builds above); pruned once all are built, by the label the Dockerfiles give that stage.
if [[ $KEEP_CACHE -eq 0 ]]; then
  timed "prune builder stage" docker image prune -f --filter dangling=true --filter label=io.iotad.stage=builder >/dev/null
fi

log "summary"
printf '  %s\n' "${SUMMARY[@]}" >&2
for arch in "${ARCHES[@]}"; do
  for name in server client prometheus; do
    t=$(image_tag "$name" "$arch")
    if docker image inspect "$t" >/dev/null 2>&1; then printf '  %-34s %s\n' "$t" "$(size_of "$t")" >&2; fi
  done
done
