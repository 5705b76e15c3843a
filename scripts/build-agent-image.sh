#!/usr/bin/env bash
# Build the edge-agent container image (the top-level Containerfile) for one architecture, from a
# wheelhouse made on this machine (scripts/build-wheel.sh --platform: wheels downloaded, nothing
# compiled) in a fresh build context, with no network in the build. arm64 builds run the few
# build steps through qemu-user (scripts/install-deps.sh registers it).
#
# Usage: scripts/build-agent-image.sh IMAGE [--arch amd64|arm64] [--base BASE]
#   --arch   default: this machine's
#   --base   default: localhost/edge-base:bookworm-<arch>, built by scripts/build-base-image.sh
#            when missing (several minutes under emulation)
# Cached by content: the image carries label edge-agent.content=<hash of the agent's sources,
# pyproject.toml, the Containerfile, the default config, the architecture and the base image's
# id>; when IMAGE exists with that label nothing is built (EDGE_AGENT_REBUILD=1 forces it).
# Prints the image's size and layers at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/podman-env.sh
. "$here/podman-env.sh"

image="" arch="" base=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
    --base) base=${2:?--base needs an image}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-agent-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) image=$1; shift ;;
  esac
done
[ -n "$image" ] || { echo "build-agent-image.sh: IMAGE is required (see --help)" >&2; exit 2; }
arch=${arch:-$(dpkg --print-architecture)}
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build-agent-image.sh: --arch $arch: only amd64 and arm64 are built" >&2; exit 2 ;;
esac
# shellcheck source=scripts/image-lock.sh
. "$here/image-lock.sh"
image_lock "$image"
if [ -z "$base" ]; then
  base=localhost/edge-base:bookworm-$arch
  podman image exists "$base" || bash "$here/build-base-image.sh" --arch "$arch" >&2
fi
podman image exists "$base" || { echo "build-agent-image.sh: base image $base is missing" >&2; exit 1; }
base_arch=$(podman image inspect --format '{{.Architecture}}' "$base")
[ "$base_arch" = "$arch" ] \
  || { echo "build-agent-image.sh: base image $base is $base_arch, not $arch" >&2; exit 1; }

content=$(
  cd "$repo" && {
    find edge_agent shared/edge_shared -type f \( -name '*.py' -o -name 'py.typed' \) -print0
    printf '%s\0' pyproject.toml shared/pyproject.toml README.md Containerfile config/config.toml
  } | sort -z | xargs -0 sha256sum
  echo "$arch $(podman image inspect --format '{{.Id}}' "$base")"
)
content=$(echo "$content" | sha256sum | cut -c1-32)
if [ -z "${EDGE_AGENT_REBUILD:-}" ] && podman image exists "$image" \
   && [ "$(podman image inspect --format '{{ index .Labels "edge-agent.content" }}' "$image")" = "$content" ]; then
  echo "$image up to date ($arch, $content)"
  exit 0
fi

previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
started=$(date +%s)
ctx=$(mktemp -d /var/tmp/edge-agent-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
bash "$here/build-wheel.sh" "$ctx/wheelhouse" --platform "$machine" > /dev/null
mkdir -p "$ctx/config"
cp "$repo/Containerfile" "$ctx/"
cp "$repo/config/config.toml" "$ctx/config/"
wheels_s=$(( $(date +%s) - started ))
podman build --network none --pull=never --platform "linux/$arch" --build-arg BASE="$base" \
  --label edge-agent.content="$content" -t "$image" "$ctx" > "$ctx/build.log" 2>&1 \
  || { tail -n 40 "$ctx/build.log" >&2; echo "build-agent-image.sh: podman build of $image failed" >&2; exit 1; }
# The image this one replaces, unless something else still uses it (another tag, a container).
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
  podman rmi "$previous" > /dev/null 2>&1 || true
fi
echo "built $image ($arch, $content): wheelhouse ${wheels_s} s, image build $(( $(date +%s) - started - wheels_s )) s"
podman image inspect --format 'size {{.Size}} bytes' "$image"
podman history --format '{{.Size}}	{{.CreatedBy}}' "$image" | cut -c1-160
