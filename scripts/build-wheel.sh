#!/usr/bin/env bash
# Build the device's wheels (edge-agent and the shared leaf edge-shared it depends on, both from
# this checkout), and optionally a wheelhouse with all their runtime dependencies, for an offline
# install (on a Pi: copy the folder over and
#   python3 -m venv /opt/edge-agent && /opt/edge-agent/bin/pip install --no-index --find-links DIR edge-agent).
#
# Usage: scripts/build-wheel.sh OUTDIR [--with-deps] [--platform aarch64|x86_64 [--agent-wheel WHEEL]]
#   --with-deps             also the dependencies, as wheels for the machine this runs on
#                           (anything without a wheel is compiled here)
#   --platform MACHINE      implies --with-deps: the dependencies as wheels for another machine
#                           (aarch64 for a Raspberry Pi 4 with 64-bit Raspberry Pi OS / Debian
#                           bookworm), CPython 3.11, glibc 2.36 or older (manylinux). They are
#                           downloaded from the package index, never compiled: no compiler and no
#                           emulation needed. A dependency that has no such wheel is an error
#                           naming it (build that wheelhouse on the target machine instead).
#   --agent-wheel WHEEL     with --platform: that edge-agent wheel (copied to OUTDIR, with the
#                           edge_shared wheels beside it when there are any)
#                           instead of one built from this checkout (scripts/build-release.sh
#                           --platform uses it)
# Both wheels are pure Python (py3-none-any) and fit every machine. No fleet code (edgectl) and none
# of the fleet's dependencies go into a device wheelhouse.
set -euo pipefail
usage="usage: build-wheel.sh OUTDIR [--with-deps] [--platform aarch64|x86_64 [--agent-wheel WHEEL]]"
out=${1:?$usage}
shift
with_deps= machine= agent_wheel=
while [ $# -gt 0 ]; do
  case "$1" in
    --with-deps) with_deps=1; shift ;;
    --platform) machine=${2:?--platform needs aarch64 or x86_64}; with_deps=1; shift 2 ;;
    --platform=*) machine=${1#--platform=}; with_deps=1; shift ;;
    --agent-wheel) agent_wheel=${2:?--agent-wheel needs a file}; shift 2 ;;
    *) echo "build-wheel.sh: unknown argument $1 ($usage)" >&2; exit 2 ;;
  esac
done
case "$machine" in
  ""|aarch64|x86_64) ;;
  arm64) machine=aarch64 ;;
  amd64) machine=x86_64 ;;
  *) echo "build-wheel.sh: --platform $machine: only aarch64 and x86_64 are built" >&2; exit 2 ;;
esac
if [ -n "$agent_wheel" ]; then
  [ -n "$machine" ] || { echo "build-wheel.sh: --agent-wheel goes with --platform" >&2; exit 2; }
  case "$(basename "$agent_wheel")" in
    edge_agent-*-py3-none-any.whl) [ -f "$agent_wheel" ] || { echo "build-wheel.sh: $agent_wheel: no such file" >&2; exit 2; } ;;
    *) echo "build-wheel.sh: --agent-wheel $agent_wheel is not an edge_agent-VERSION-py3-none-any.whl" >&2; exit 2 ;;
  esac
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
# pip builds in the source tree (build/, *.egg-info): it builds from a copy of the sources, so two
# builds at once (the test suite's two workers) never share or delete each other's build/, a stale
# build/ cannot smuggle deleted modules into a wheel, and the checkout is left as it was.
src=$(mktemp -d "${TMPDIR:-/tmp}/edge-wheel-src.XXXXXX")
trap 'rm -rf "$src"' EXIT
copy_sources() {  # FROM TO FILES...: the files a wheel is made of, without caches
  local from=$1 to=$2
  shift 2
  mkdir -p "$to"
  (cd "$from" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' "$@") | tar -xf - -C "$to"
}
copy_sources "$repo" "$src/agent" pyproject.toml README.md edge_agent
copy_sources "$repo/shared" "$src/shared" pyproject.toml edge_shared
# The shared leaf (shared/) first: the agent's wheel names it as a dependency, found in OUTDIR.
build_shared() {
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$src/shared"
}
if [ -z "$with_deps" ]; then
  build_shared
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$src/agent"
elif [ -z "$machine" ]; then
  build_shared
  "$python" -m pip wheel --quiet --find-links "$out" --wheel-dir "$out" "$src/agent"
else
  if [ -n "$agent_wheel" ]; then
    cp "$agent_wheel" "$out/"
    wheel=$out/$(basename "$agent_wheel")
    # The shared leaf beside it (the one the agent's wheel pins), else this checkout's.
    shared_wheels=$(ls "$(dirname "$agent_wheel")"/edge_shared-*-py3-none-any.whl 2>/dev/null || true)
    if [ -n "$shared_wheels" ]; then cp $shared_wheels "$out/"; else build_shared; fi
  else
    build_shared
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$src/agent"
    version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$repo/pyproject.toml" | head -n1)
    wheel=$(ls "$out"/edge_agent-"$version"-py3-none-any.whl)
  fi
  bash "$repo/scripts/download-wheels.sh" "$out" "$machine" "$wheel" || {
    echo "build-wheel.sh: build this wheelhouse on an $machine machine with 'scripts/build-wheel.sh $out --with-deps'" >&2
    exit 1
  }
fi
ls "$out"/edge_agent-*.whl
