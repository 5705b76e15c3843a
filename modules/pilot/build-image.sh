#!/usr/bin/env bash
# Build the edge-pilot image from a fresh context with host-built wheels (no network in the build).
# Usage: modules/pilot/build-image.sh [IMAGE]   (default localhost/edge-pilot:dev)
# Idempotent: the image carries label edge.pilot.content=<hash of sources, models, config>; when an
# image with that tag and label exists the build is skipped (EDGE_PILOT_REBUILD=1 forces it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
image=${1:-localhost/edge-pilot:dev}
base=${EDGE_PILOT_BASE:-localhost/edge-base:bookworm}
# shellcheck source=/dev/null
[ -f "$root/scripts/podman-env.sh" ] && . "$root/scripts/podman-env.sh"

content=$(cd "$here" && find Containerfile pyproject.toml edge_pilot models/model.onnx models/model.json config -type f \
  ! -name '*.pyc' ! -path '*__pycache__*' -print0 | sort -z | xargs -0 sha256sum | { cat; echo "$base"; } | sha256sum | cut -c1-32)
if [ -z "${EDGE_PILOT_REBUILD:-}" ] && podman image exists "$image" \
   && [ "$(podman image inspect --format '{{ index .Labels "edge.pilot.content" }}' "$image")" = "$content" ]; then
  echo "$image up to date ($content)"
  exit 0
fi
podman image exists "$base" || { echo "base image $base missing: run scripts/build-base-image.sh" >&2; exit 1; }
ctx=$(mktemp -d /var/tmp/edge-pilot-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels" "$ctx/src" "$ctx/models"
cp -r "$here/pyproject.toml" "$here/edge_pilot" "$ctx/src/"
find "$ctx/src" -name '__pycache__' -prune -exec rm -rf {} +
# edge-pilot wheel plus every runtime dependency as binary wheels for this arch / CPython 3.11
python3 -m pip wheel --quiet --prefer-binary --wheel-dir "$ctx/wheels" "$ctx/src"
cp "$here/Containerfile" "$ctx/"
cp "$here/models/model.onnx" "$here/models/model.json" "$ctx/models/"
cp -r "$here/config" "$ctx/config"
podman build --quiet --build-arg BASE="$base" --label edge.pilot.content="$content" -t "$image" -f "$ctx/Containerfile" "$ctx"
echo "built $image ($content)"
