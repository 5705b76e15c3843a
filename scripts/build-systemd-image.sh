#!/usr/bin/env bash
# Build localhost/edge-systemd:bookworm: the local Debian base (scripts/build-base-image.sh)
# plus systemd as PID 1, dbus and procps. The system tests boot it with
#   podman run -d --systemd=always IMAGE /sbin/init
# and install the edge-agent wheel + unit inside to test the unit end to end.
#
# Usage: scripts/build-systemd-image.sh [IMAGE] [--arch amd64|arm64]
#   (default localhost/edge-systemd:bookworm; for another architecture than this machine's,
#   localhost/edge-systemd:bookworm-<arch> from localhost/edge-base:bookworm-<arch>, built
#   through qemu-user: apt-get runs emulated, several minutes)
# Idempotent: does nothing when the image exists (EDGE_REBUILD_SYSTEMD=1 forces a rebuild).
# Needs the Debian mirror during the build (apt-get inside the build container).
set -euo pipefail
image="" arch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
    -*) echo "build-systemd-image.sh: unknown option $1" >&2; exit 2 ;;
    *) image=$1; shift ;;
  esac
done
host_arch=$(dpkg --print-architecture)
arch=${arch:-$host_arch}
if [ "$arch" = "$host_arch" ]; then
  image=${image:-localhost/edge-systemd:bookworm}
  base=${EDGE_BASE_IMAGE:-localhost/edge-base:bookworm}
else
  image=${image:-localhost/edge-systemd:bookworm-$arch}
  base=${EDGE_BASE_IMAGE:-localhost/edge-base:bookworm-$arch}
fi
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/podman-env.sh
. "$here/podman-env.sh"
# shellcheck source=scripts/image-lock.sh
. "$here/image-lock.sh"
image_lock "$image"

if [ -z "${EDGE_REBUILD_SYSTEMD:-}" ] && podman image exists "$image"; then
  echo "systemd image $image present"
  exit 0
fi
"$here/build-base-image.sh" "$base" --arch "$arch"

work=$(mktemp -d /var/tmp/edge-systemd.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The base image's sources.list is the debootstrap mirror; keep it.
cat > "$work/Containerfile" <<'CONTAINERFILE'
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      systemd systemd-sysv dbus procps \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 # No getty / udev-trigger noise in a container; keep the journal in memory.
 && systemctl mask getty@tty1.service console-getty.service systemd-udevd.service \
      systemd-udev-trigger.service systemd-firstboot.service \
 && mkdir -p /etc/systemd/journald.conf.d \
 && printf '[Journal]\nStorage=volatile\n' > /etc/systemd/journald.conf.d/volatile.conf
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
CONTAINERFILE
echo "building $image from $base (apt-get install systemd; about 1 minute)"
podman build --platform "linux/$arch" --build-arg BASE="$base" -t "$image" "$work" > "$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; exit 1; }
echo "built $image"
