#!/usr/bin/env bash
# Build the edge-agent wheel, and optionally a wheelhouse with all its runtime dependencies,
# for an offline install (on a Pi: copy the folder over and
#   python3 -m venv /opt/edge-agent && /opt/edge-agent/bin/pip install --no-index --find-links DIR edge-agent).
#
# Usage: scripts/build-wheel.sh OUTDIR [--with-deps]
# Wheels with compiled code are built for the machine this runs on: build the wheelhouse on
# the same architecture and Python minor version as the target (aarch64 + 3.11 for a Pi 4).
set -euo pipefail
out=${1:?usage: build-wheel.sh OUTDIR [--with-deps]}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
# pip builds in the source tree; a stale build/ could smuggle deleted modules into the wheel.
rm -rf "$repo/build"
if [ "${2:-}" = "--with-deps" ]; then
  "$python" -m pip wheel --quiet --wheel-dir "$out" "$repo"
else
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$repo"
fi
ls "$out"/edge_agent-*.whl
