#!/usr/bin/env bash
# Build the Python base image locally (no registry needed): a debootstrap of Debian bookworm with
# Debian's python3.11 + venv, imported into Docker.
#
#   scripts/build-base-image.sh [amd64|arm64] [--force]
#
# Result (ARCH defaults to the host's):
#   iotad-base:py3.11-bookworm-<arch>   always
#   python:3.11-slim-bookworm           also, for the host arch only, so the Dockerfiles' default
#                                       ARG BASE_IMAGE resolves locally (never overwrites a real,
#                                       pulled python image: only one that carries our label)
#
# arm64 on an x86 host runs debootstrap's second stage under QEMU (scripts/install-docker.sh --arm64).
# Idempotent: an existing image is kept unless --force. Environment knobs:
#   DEBIAN_MIRROR   default: the mirror of this machine's apt sources, else http://deb.debian.org/debian
#   SECURITY_MIRROR default: derived from the apt sources, else http://deb.debian.org/debian-security
#   BASE_UPGRADE    1 (default): apply bookworm-updates/-security updates; 0: plain bookworm point release
#   WORK_DIR        scratch space (default /var/tmp/iotad-base)
set -euo pipefail

ARCH=""
FORCE=0
for arg in "$@"; do
  case "$arg" in
    amd64|arm64) ARCH="$arg" ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
HOST_ARCH=$(dpkg --print-architecture)
ARCH="${ARCH:-$HOST_ARCH}"

SUITE=bookworm
TAG="iotad-base:py3.11-${SUITE}-${ARCH}"
DEFAULT_BASE="python:3.11-slim-${SUITE}"
LABEL_KEY="org.iotad.base"
WORK_DIR="${WORK_DIR:-/var/tmp/iotad-base}"
BASE_UPGRADE="${BASE_UPGRADE:-1}"

log() { printf '[build-base-image %s] %s\n' "$ARCH" "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { echo "run as root (debootstrap)" >&2; exit 1; }

# The host arch also gets the name the Dockerfiles use by default, unless a real image owns it.
tag_default() {
  [[ "$ARCH" == "$HOST_ARCH" ]] || return 0
  if docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1; then
    local owner
    owner=$(docker image inspect -f "{{ index .Config.Labels \"${LABEL_KEY}\" }}" "$DEFAULT_BASE" 2>/dev/null || true)
    if [[ "$owner" != "debootstrap" ]]; then
      log "$DEFAULT_BASE exists and is not ours (a pulled image?): leaving it alone"
      return 0
    fi
  fi
  docker tag "$TAG" "$DEFAULT_BASE"
}

if [[ $FORCE -eq 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG exists: skipping (use --force to rebuild)"
  tag_default
  exit 0
fi

# Mirrors: reuse this machine's apt configuration (deb822 or one-line format).
apt_uri() {  # $1: suite to look for
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e "$f" ]] || continue
    awk -v s="$1" '
      /^[[:space:]]*$/ { if (uri != "" && hit) { print uri; exit } uri=""; hit=0; next }
      /^URIs:/   { uri=$2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit=1 }
      END { if (uri != "" && hit) print uri }' "$f" | head -n1
  done
  grep -hE "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[a-z]+://[^[:space:]]+[[:space:]]+$1[[:space:]]" \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}' | head -n1 || true
}
DEBIAN_MIRROR="${DEBIAN_MIRROR:-$(apt_uri "$SUITE" | head -n1)}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-$(apt_uri "${SUITE}-security" | head -n1)}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ "$ARCH" != "$HOST_ARCH" && ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 && "$ARCH" == arm64 ]]; then
  echo "arm64 on $HOST_ARCH needs QEMU binfmt: run scripts/install-docker.sh --arm64 first" >&2
  exit 1
fi

ROOTFS="$WORK_DIR/rootfs-$ARCH"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"
cleanup() {
  # Never leave bind mounts behind (a later rm -rf would walk into the host's /proc).
  local m
  for m in proc sys dev; do
    if mountpoint -q "$ROOTFS/$m" 2>/dev/null; then umount -l "$ROOTFS/$m" || true; fi
  done
}
trap cleanup EXIT

# python3-venv brings ensurepip's wheels (pip, setuptools) so `python3 -m venv` works as in the
# official image; netbase gives /etc/services + /etc/protocols; ca-certificates for TLS clients.
PKGS=python3,python3-venv,ca-certificates,netbase
log "debootstrap $SUITE ($DEBIAN_MIRROR) -> $ROOTFS"
# debootstrap runs a foreign arch's second stage itself when binfmt (QEMU, F flag) is registered.
debootstrap --arch="$ARCH" --variant=minbase --include="$PKGS" \
  --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
  "$SUITE" "$ROOTFS" "$DEBIAN_MIRROR" >"$WORK_DIR/debootstrap-$ARCH.log" 2>&1 \
  || { tail -n 30 "$WORK_DIR/debootstrap-$ARCH.log" >&2; exit 1; }

cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $SUITE main
deb $DEBIAN_MIRROR ${SUITE}-updates main
deb $SECURITY_MIRROR ${SUITE}-security main
EOF
# Keep images small: no docs, man pages or locales from later apt installs either.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-iotad-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/01-iotad-norecommends"

if [[ "$BASE_UPGRADE" == 1 ]]; then
  log "applying ${SUITE}-updates/-security"
  mount -t proc proc "$ROOTFS/proc"
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade' \
    >>"$WORK_DIR/debootstrap-$ARCH.log" 2>&1 \
    || { tail -n 30 "$WORK_DIR/debootstrap-$ARCH.log" >&2; exit 1; }
  umount -l "$ROOTFS/proc"
fi

# Trim: apt lists/caches, docs (copyright files kept), man pages, locales, logs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
  "$ROOTFS"/usr/share/lintian/*
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
find "$ROOTFS/usr/lib/python3.11" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
: >"$ROOTFS/etc/resolv.conf"
echo iotad >"$ROOTFS/etc/hostname"

py=$(readlink -f "$ROOTFS/usr/bin/python3")
log "python: ${py#"$ROOTFS"}, rootfs $(du -sh "$ROOTFS" | cut -f1)"

# The image: a `FROM scratch` + `ADD rootfs.tar` build with --platform, not `docker import`: Debian's
# engine (20.10) ignores `docker import --platform` and labels an arm64 rootfs amd64, and a
# `docker build --platform linux/arm64` on top of it then tries to pull the base from a registry.
CTX="$WORK_DIR/ctx-$ARCH"
rm -rf "$CTX"
mkdir -p "$CTX"
tar --numeric-owner -C "$ROOTFS" -cf "$CTX/rootfs.tar" .
cleanup
rm -rf "$ROOTFS"
cat >"$CTX/Dockerfile" <<EOF
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8 \\
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL ${LABEL_KEY}=debootstrap ${LABEL_KEY}.suite=${SUITE}
CMD ["python3"]
EOF
log "docker build (FROM scratch, linux/$ARCH) -> $TAG"
DOCKER_BUILDKIT=0 docker build --platform "linux/$ARCH" --network host -t "$TAG" "$CTX" \
  >"$WORK_DIR/image-$ARCH.log" 2>&1 || { tail -n 20 "$WORK_DIR/image-$ARCH.log" >&2; exit 1; }
rm -rf "$CTX"
got=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$TAG")
[[ "$got" == "linux/$ARCH" ]] || { echo "base image says $got, expected linux/$ARCH" >&2; exit 1; }
tag_default
log "done: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
