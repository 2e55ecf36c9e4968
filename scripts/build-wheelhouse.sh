#!/usr/bin/env bash
# Download every runtime wheel the images need, on the host, for one target arch, so that the
# Docker builds install with `pip --no-index --find-links` (no network inside the build).
#
#   scripts/build-wheelhouse.sh [amd64|arm64] [--force]
#
# Output: wheelhouse/<arch>/
#   *.whl              the runtime dependency closure of pyproject's [project].dependencies
#                      (no extras: no flwr[simulation]/ray, no dev tools), for CPython 3.11, glibc >= 2.17
#   requirements.txt   the top-level requirements, markers evaluated for the target, pinned to the
#                      versions downloaded (the images install exactly these)
#   setuptools-*.whl   build backend, so the image can build iotad from source offline
#   iotad-*.whl        the project itself (pip wheel --no-deps .), rebuilt on every run
#
# torch: amd64 takes the CPU build 2.13.0+cpu (find-links /opt/wheels on the build machines; set
# TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu where that index is reachable instead); never
# PyPI's x86_64 torch, a multi-GB CUDA build (checked below). arm64 takes PyPI's aarch64 wheel, a CPU build.
#
# Idempotent: the download is skipped when wheelhouse/<arch>/.stamp matches the requirements.
# pip on an x86 host evaluates dependency markers (platform_machine) for x86: for arm64 that would
# drag in torch's nvidia-*/triton wheels, so pip runs with platform.machine() reporting the target.
set -euo pipefail

ARCH=""
FORCE=0
for arg in "$@"; do
  case "$arg" in
    amd64|arm64) ARCH="$arg" ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
ARCH="${ARCH:-$(dpkg --print-architecture 2>/dev/null || echo amd64)}"
case "$ARCH" in
  amd64) MACHINE=x86_64 ;;
  arm64) MACHINE=aarch64 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="${WHEELHOUSE_DIR:-$ROOT/wheelhouse}/$ARCH"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-}"

log() { printf '[build-wheelhouse %s] %s\n' "$ARCH" "$*" >&2; }

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "needs a host python3.11 (markers are evaluated for 3.11); set PYTHON=" >&2; exit 1; }
mkdir -p "$OUT"

# glibc of Debian bookworm (the base) is 2.36; pip 23 does not expand manylinux_2_36 to older
# tags by itself, so list them, newest first.
PLATFORMS=()
for minor in 36 35 34 33 32 31 30 29 28 27 26 25 24 17; do
  PLATFORMS+=(--platform "manylinux_2_${minor}_${MACHINE}")
done
PLATFORMS+=(--platform "manylinux2014_${MACHINE}")
[[ "$MACHINE" == x86_64 ]] && PLATFORMS+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
PLATFORMS+=(--platform "linux_${MACHINE}")
TARGET=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 "${PLATFORMS[@]}")

# pip with platform.machine() patched: markers (platform_machine) evaluate for the target arch.
pip_for_target() {
  "$PYTHON" - "$MACHINE" "$@" <<'PY'
import platform, sys
machine = sys.argv[1]
platform.machine = lambda: machine
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
PY
}

# 1. Top-level runtime requirements for the target, from pyproject (markers evaluated, extras dropped).
REQ_IN="$OUT/requirements.in"
"$PYTHON" - "$ROOT/pyproject.toml" "$MACHINE" "$ARCH" >"$REQ_IN.tmp" <<'PY'
import sys, tomllib
from pip._vendor.packaging.requirements import Requirement
path, machine, arch = sys.argv[1:4]
env = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
       "os_name": "posix", "python_version": "3.11", "python_full_version": "3.11.2",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
deps = tomllib.load(open(path, "rb"))["project"]["dependencies"]
for line in deps:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    req.marker = None
    if req.extras:
        print(f"# dropping extras {sorted(req.extras)} of {req.name}", file=sys.stderr)
        req.extras = set()
    spec = str(req)
    # amd64: insist on the CPU build (a bare ==2.13.0 also matches PyPI's CUDA wheel).
    if req.name == "torch" and arch == "amd64" and "+" not in spec and "==" in spec:
        spec = spec.replace("==", "==", 1) + "+cpu"
    print(spec)
PY
mv "$REQ_IN.tmp" "$REQ_IN"
log "requirements: $(tr '\n' ' ' <"$REQ_IN")"

# 2. Download the closure (skipped if unchanged).
STAMP_VALUE=$( { cat "$REQ_IN"; echo "${PLATFORMS[*]}"; echo "${TORCH_CPU_INDEX}"; } | sha256sum | cut -c1-16)
download() {
  rm -f "$OUT/.stamp"
  local extra=()
  [[ -n "$TORCH_CPU_INDEX" ]] && extra+=(--extra-index-url "$TORCH_CPU_INDEX")
  log "pip download -> $OUT"
  pip_for_target download --quiet --disable-pip-version-check --dest "$OUT" "${TARGET[@]}" "${extra[@]}" \
    -r "$REQ_IN" "setuptools>=68"
}
DOWNLOADED=0
if [[ $FORCE -eq 0 && -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP_VALUE" ]]; then
  log "wheelhouse up to date (stamp $STAMP_VALUE): skipping download"
else
  download
  DOWNLOADED=1
fi

# 3. The project wheel (pure Python, same for every arch): always rebuilt from the current source.
rm -f "$OUT"/iotad-*.whl
if [[ -d "$ROOT/iotad" ]]; then
  log "pip wheel --no-deps $ROOT"
  if [[ ! -f "$ROOT/README.md" ]] && grep -q '^readme *= *"README.md"' "$ROOT/pyproject.toml"; then
    log "warning: pyproject names README.md, which does not exist yet: building without it"
    tmpsrc=$(mktemp -d)
    cp -r "$ROOT/pyproject.toml" "$ROOT/iotad" "$tmpsrc/"
    : >"$tmpsrc/README.md"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-index --find-links "$OUT" \
      --wheel-dir "$OUT" "$tmpsrc"
    rm -rf "$tmpsrc"
  else
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-index --find-links "$OUT" \
      --wheel-dir "$OUT" "$ROOT"
  fi
  rm -rf "$ROOT/build" 2>/dev/null || true
fi

# 4. Verify: the closure is complete for the target, nothing extra (stale or wrong-arch), torch is a CPU
#    build, and pin requirements.txt to what is here.
check() {
"$PYTHON" - "$OUT" "$MACHINE" "$ARCH" <<'PY'
import os, re, sys, zipfile
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
out, machine, arch = sys.argv[1:4]
env = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
       "os_name": "posix", "python_version": "3.11", "python_full_version": "3.11.2",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
wheels = {}
for f in sorted(os.listdir(out)):
    if f.endswith(".whl"):
        name, ver, _, tags = parse_wheel_filename(f)
        if name in wheels:
            # An older version left from a previous run: keep the newer.
            old = wheels[name]
            drop = old if old[1] < ver else (f, ver, tags)
            os.remove(os.path.join(out, drop[0]))
            print(f"removed stale {drop[0]}", file=sys.stderr)
            if drop is old:
                wheels[name] = (f, ver, tags)
            continue
        wheels[name] = (f, ver, tags)

def requires(fname):
    with zipfile.ZipFile(os.path.join(out, fname)) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("Requires-Dist:")]

top = [Requirement(l.strip()) for l in open(os.path.join(out, "requirements.in")) if l.strip() and not l.startswith("#")]
done = {}  # name -> extras whose requirements were followed ("" = the base requirements)
todo = list(top)
problems = []
while todo:
    req = todo.pop()
    name = canonicalize_name(req.name)
    if name not in wheels:
        problems.append(f"missing wheel for {req}")
        continue
    fname, ver, _ = wheels[name]
    if not req.specifier.contains(ver, prereleases=True):
        problems.append(f"{fname} does not satisfy {req}")
    new = ({""} | set(req.extras)) - done.get(name, set())
    if not new:
        continue
    done.setdefault(name, set()).update(new)
    for line in requires(fname):
        sub = Requirement(line)
        if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in sorted(new)):
            sub.marker = None
            todo.append(sub)
needed = set(done)
for name, (fname, ver, _) in sorted(wheels.items()):
    if name in ("setuptools", "iotad"):
        continue
    if name not in needed:
        os.remove(os.path.join(out, fname))
        print(f"removed {fname}: not in the {arch} closure", file=sys.stderr)
bad = [f for f, *_ in wheels.values() if re.match(r"(nvidia_|triton-)", f) and os.path.exists(os.path.join(out, f))]
if bad:
    problems.append(f"GPU wheels in a CPU wheelhouse: {bad}")
if "torch" in wheels:
    fname = wheels["torch"][0]
    size = os.path.getsize(os.path.join(out, fname))
    if arch == "amd64" and "+cpu" not in fname:
        problems.append(f"{fname} is not the CPU build")
    if size > 600e6:
        problems.append(f"{fname} is {size/1e6:.0f} MB: a CUDA build?")
if problems:
    sys.exit("wheelhouse check failed:\n  " + "\n  ".join(problems))
with open(os.path.join(out, "requirements.txt"), "w") as fh:
    fh.write(f"# generated by scripts/build-wheelhouse.sh for linux/{arch}; top-level runtime deps, pinned\n")
    for r in top:
        fh.write(f"{r.name}=={wheels[canonicalize_name(r.name)][1]}\n")
total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".whl"))
print(f"{len(needed)} runtime wheels, {total/1e6:.0f} MB, torch={wheels.get('torch', ('-',))[0]}", file=sys.stderr)
PY
}
if ! check; then
  [[ $DOWNLOADED -eq 0 ]] || exit 1
  log "wheelhouse incomplete: downloading again"
  download
  check
fi
echo "$STAMP_VALUE" >"$OUT/.stamp"
log "done: $OUT"
