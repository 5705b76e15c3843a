#!/usr/bin/env bash
# Build the local Debian base image used by our Containerfiles in tests and the quickstart.
# No public registry is reachable on the dev/CI machines, so we debootstrap a minimal
# bookworm with Python and import it. On a real device build, pass a public base instead
# (--build-arg BASE=docker.io/library/debian:bookworm-slim or python:3.11-slim-bookworm).
#
# Usage: scripts/build-base-image.sh [IMAGE] [--arch amd64|arm64]
#   IMAGE defaults to localhost/edge-base:bookworm for this machine's architecture and to
#   localhost/edge-base:bookworm-<arch> for another one. A foreign architecture is debootstrapped
#   through qemu-user-static's binfmt handler (scripts/install-deps.sh registers qemu-aarch64):
#   about 3 minutes natively, 6 to 10 under emulation. The image built for this machine's
#   architecture is also tagged localhost/edge-base:bookworm-<arch>, so multi-arch builds name
#   every base the same way.
# Idempotent: does nothing when the image exists (set EDGE_REBUILD_BASE=1 to force).
#
# Documentation, man pages, translations and apt's lists are left out (about 50 MB): every
# image we build starts from this one, and nothing in them reads those files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/podman-env.sh
. "$here/podman-env.sh"

image="" arch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
    --arch=*) arch=${1#--arch=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-base-image.sh: unknown option $1" >&2; exit 2 ;;
    *) image=$1; shift ;;
  esac
done
host_arch=$(dpkg --print-architecture)
arch=${arch:-$host_arch}
case "$arch" in
  amd64) qemu=qemu-x86_64 ;;
  arm64) qemu=qemu-aarch64 ;;
  *) echo "build-base-image.sh: --arch $arch: only amd64 and arm64 are built" >&2; exit 2 ;;
esac
if [ -z "$image" ]; then
  if [ "$arch" = "$host_arch" ]; then image=localhost/edge-base:bookworm; else image=localhost/edge-base:bookworm-$arch; fi
fi
arch_tag=localhost/edge-base:bookworm-$arch

# One build per architecture at a time (scripts/test starts the arm64 one in the background, and a
# test may ask for it meanwhile): the second caller waits, then finds the image.
lockdir=${EDGE_DEV_DIR:-/var/tmp/edge-agent-dev}
mkdir -p "$lockdir"
exec 9>"$lockdir/build-base-$arch.lock"
flock 9
if [ -z "${EDGE_REBUILD_BASE:-}" ] && podman image exists "$image"; then
  echo "base image $image present"
  [ "$arch" = "$host_arch" ] && [ "$image" != "$arch_tag" ] && podman tag "$image" "$arch_tag"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: run scripts/install-deps.sh" >&2; exit 1; }
if [ "$arch" != "$host_arch" ] && ! grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null; then
  echo "build-base-image.sh: $arch binaries cannot run here: /proc/sys/fs/binfmt_misc/$qemu is not enabled" \
       "(run scripts/install-deps.sh; it installs qemu-user-static and registers the handler)" >&2
  exit 1
fi

# The first Debian mirror apt uses (one-line or deb822 sources); '|| true': no sources file is fine.
mirror=${DEBIAN_MIRROR:-$( (grep -hE '^[[:space:]]*(URIs:|deb[[:space:]])' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true) | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
work=$(mktemp -d /var/tmp/edge-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
echo "debootstrapping bookworm $arch from $mirror"
debootstrap --arch="$arch" --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
root=$work/rootfs
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/var/cache/debconf/"*-old \
  "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"* \
  "$root/var/log/"*.log "$root/var/log/apt/"* "$root/var/cache/ldconfig/aux-cache"
variant=""
[ "$arch" = arm64 ] && variant=v8
tar -C "$root" -c . | podman import --quiet --arch "$arch" ${variant:+--variant "$variant"} --os linux \
  --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
[ "$image" != "$arch_tag" ] && [ "$arch" = "$host_arch" ] && podman tag "$image" "$arch_tag"
echo "built $image ($arch, $(( $(date +%s) - started )) s)"
