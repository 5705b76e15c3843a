#!/usr/bin/env bash
# Build the local Debian base image used by our Containerfiles in tests and the quickstart.
# No public registry is reachable on the dev/CI machines, so we debootstrap a minimal
# bookworm with Python and import it. On a real device build, pass a public base instead
# (--build-arg BASE=docker.io/library/debian:bookworm-slim or python:3.11-slim-bookworm).
#
# Usage: scripts/build-base-image.sh [IMAGE]   (default localhost/edge-base:bookworm)
# Idempotent: does nothing when the image exists (set EDGE_REBUILD_BASE=1 to force).
set -euo pipefail
image=${1:-localhost/edge-base:bookworm}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/podman-env.sh
. "$here/podman-env.sh"

if [ -z "${EDGE_REBUILD_BASE:-}" ] && podman image exists "$image"; then
  echo "base image $image present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: run scripts/install-deps.sh" >&2; exit 1; }

# The first Debian mirror apt uses (one-line or deb822 sources); '|| true': no sources file is fine.
mirror=${DEBIAN_MIRROR:-$( (grep -hE '^[[:space:]]*(URIs:|deb[[:space:]])' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true) | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
work=$(mktemp -d /var/tmp/edge-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "debootstrapping bookworm from $mirror (about 3 minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "built $image"
