#!/usr/bin/env bash
# Download binary wheels for another machine: REQUIREMENT... and all their dependencies, for
# CPython 3.11 on glibc 2.36 or older (Debian bookworm; Raspberry Pi OS bookworm on a Pi 4).
# Only manylinux/abi3/pure wheels are taken, never an sdist: nothing is compiled and nothing runs
# under emulation. The one place the project fetches wheels for a target platform
# (scripts/build-wheel.sh --platform, modules/pilot/build-image.sh).
#
# Usage: scripts/download-wheels.sh OUTDIR MACHINE REQUIREMENT...   (MACHINE: x86_64 or aarch64)
# Wheels already in OUTDIR count (--find-links): the project's own, e.g. edge-shared, are not on the
# package index.
# A requirement without such a wheel on the package index fails naming it:
#   download-wheels.sh: tpm2-pytss<4,>=2.3 has no wheel for aarch64 (CPython 3.11, glibc <= 2.36)
set -euo pipefail
out=${1:?usage: download-wheels.sh OUTDIR MACHINE REQUIREMENT...}
machine=${2:?usage: download-wheels.sh OUTDIR MACHINE REQUIREMENT...}
shift 2
[ $# -gt 0 ] || { echo "download-wheels.sh: no requirement given" >&2; exit 2; }
case "$machine" in
  aarch64|x86_64) ;;
  *) echo "download-wheels.sh: machine $machine: only aarch64 and x86_64" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
# Every glibc a manylinux wheel may ask for, up to bookworm's 2.36 (pip takes the tags it is given
# literally: manylinux_2_36 alone would refuse a manylinux_2_17 wheel).
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
platforms+=(--platform "manylinux2014_$machine")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$python" -m pip download --quiet --only-binary=:all: "${platforms[@]}" \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --find-links "$out" --dest "$out" "$@" > "$log" 2>&1; then
  missing=$(sed -n 's/^ERROR: No matching distribution found for \(.*\)$/\1/p' "$log" | head -n1)
  grep -v '^WARNING: Location' "$log" >&2 || true
  echo "download-wheels.sh: ${missing:-a requirement} has no wheel for $machine (CPython 3.11, glibc <= 2.36)" >&2
  exit 1
fi
