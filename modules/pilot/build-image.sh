#!/usr/bin/env bash
# Build the edge-pilot image for one architecture, from a fresh context (no network in the build).
#
# Usage: modules/pilot/build-image.sh [IMAGE] [--arch amd64|arm64]
#   IMAGE  default localhost/edge-pilot:dev; --arch defaults to this machine's architecture.
#   The base is localhost/edge-base:bookworm-<arch> (EDGE_PILOT_BASE overrides it), built by
#   scripts/build-base-image.sh when missing. A foreign architecture builds under qemu-user.
#
# The target's binary wheels (CPython 3.11, manylinux) are fetched here with `pip download
# --platform`, so no compiler and no emulated pip resolver is needed; the build only unpacks them.
# Idempotent: the image carries label edge.pilot.content=<hash of sources, models, config, base
# image id, arch>; when an image with that tag and label exists the build is skipped
# (EDGE_PILOT_REBUILD=1 forces it). podman's layer cache keeps the libraries layer between builds
# whose wheels did not change, so a code-only rebuild changes only the small code layer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=/dev/null
[ -f "$root/scripts/podman-env.sh" ] && . "$root/scripts/podman-env.sh"

image="" arch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
    --arch=*) arch=${1#--arch=}; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
    *) image=$1; shift ;;
  esac
done
image=${image:-localhost/edge-pilot:dev}
arch=${arch:-$(dpkg --print-architecture)}
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build-image.sh: --arch $arch: only amd64 and arm64 are built" >&2; exit 2 ;;
esac
base=${EDGE_PILOT_BASE:-localhost/edge-base:bookworm-$arch}
# shellcheck source=scripts/image-lock.sh
. "$root/scripts/image-lock.sh"
image_lock "$image"
if ! podman image exists "$base"; then
  [ -n "${EDGE_PILOT_BASE:-}" ] && { echo "build-image.sh: base image $base missing" >&2; exit 1; }
  bash "$root/scripts/build-base-image.sh" --arch "$arch"
fi
base_id=$(podman image inspect --format '{{.Id}}' "$base")

content=$(cd "$here" && find Containerfile build-image.sh pyproject.toml edge_pilot models/model.onnx models/model.json config \
  -type f ! -name '*.pyc' ! -path '*__pycache__*' -print0 | sort -z | xargs -0 sha256sum \
  | { cat; sha256sum < "$root/scripts/download-wheels.sh"; echo "$base_id $arch"; } | sha256sum | cut -c1-32)
if [ -z "${EDGE_PILOT_REBUILD:-}" ] && podman image exists "$image" \
   && [ "$(podman image inspect --format '{{ index .Labels "edge.pilot.content" }}' "$image")" = "$content" ]; then
  echo "$image up to date ($content)"
  exit 0
fi
started=$(date +%s)
ctx=$(mktemp -d /var/tmp/edge-pilot-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels" "$ctx/src" "$ctx/app" "$ctx/bin" "$ctx/models" "$ctx/pilot-wheel"
cp -r "$here/pyproject.toml" "$here/edge_pilot" "$ctx/src/"
find "$ctx/src" -name '__pycache__' -prune -exec rm -rf {} +
# The pilot's own wheel (pure Python) only tells pip the dependencies; its code goes in its own layer.
python3 -m pip wheel --quiet --no-deps --wheel-dir "$ctx/pilot-wheel" "$ctx/src"
bash "$root/scripts/download-wheels.sh" "$ctx/wheels" "$machine" "$ctx"/pilot-wheel/*.whl \
  || { echo "build-image.sh: no binary wheels for linux/$arch of every dependency above" >&2; exit 1; }
rm -f "$ctx"/wheels/edge_pilot-*.whl
cp -r "$ctx/src/edge_pilot" "$ctx/app/"
rm -f "$ctx/app/edge_pilot/py.typed"
cat > "$ctx/bin/edge-pilot" <<'PY'
#!/opt/edge-pilot/bin/python3
import sys

from edge_pilot.cli import main

sys.exit(main())
PY
chmod 0755 "$ctx/bin/edge-pilot"
cp "$here/Containerfile" "$ctx/"
cp "$here/models/model.onnx" "$here/models/model.json" "$ctx/models/"
cp -r "$here/config" "$ctx/config"
# Same mtimes for the same files, so the layer cache and the layers' bytes do not depend on the checkout.
find "$ctx/app" "$ctx/bin" "$ctx/models" "$ctx/config" -exec touch -h -d '2026-01-01 00:00:00 UTC' {} +
variant=""
[ "$arch" = arm64 ] && variant=/v8
podman build --quiet --pull=never --platform "linux/$arch$variant" --build-arg BASE="$base" \
  --label edge.pilot.content="$content" -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null
echo "built $image (linux/$arch, $content, $(( $(date +%s) - started )) s)"
