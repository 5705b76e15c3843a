#!/usr/bin/env bash
# Build the multi-arch images: every image for linux/amd64 and linux/arm64 from the debootstrapped
# Debian base of that architecture, joined into one image index (manifest list) per image.
#
# Usage: scripts/build-images.sh [--arch amd64,arm64] [--tag TAG] [--push REGISTRY/PREFIX]
#                                [--insecure] [--only pilot|agent] [--local-prefix P]
#   Builds localhost/edge-pilot:<arch> and localhost/edge-agent:<arch>, then the local lists
#   localhost/edge-pilot:TAG and localhost/edge-agent:TAG (TAG default dev; not kept after --push).
#   --local-prefix replaces "localhost/edge-" in those names (tests use their own). --push pushes
#   each list with every platform image (`podman manifest push --all`) to REGISTRY/PREFIX/edge-pilot:TAG
#   and .../edge-agent:TAG and prints the index digests. Sign them afterwards, once per index:
#     edgectl sign-image REGISTRY/PREFIX/edge-pilot:TAG --key image.key   (signs each platform too)
#   --insecure: the registry speaks plain HTTP (local tests).
#
# Each per-arch build is skipped when its content label matches (modules/pilot/build-image.sh,
# scripts/build-agent-image.sh); the bases are built once (scripts/build-base-image.sh --arch).
# Cold, on 2 cores: the arm64 base takes about 4 minutes under qemu, the arm64 pilot about 1.5,
# the arm64 agent about 1 (docs/operations.md, "Images for amd64 and arm64").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/podman-env.sh
. "$root/scripts/podman-env.sh"

arches=amd64,arm64 tag=dev push="" tls=() only="" prefix=localhost/edge-
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arches=${2:?}; shift 2 ;;
    --tag) tag=${2:?}; shift 2 ;;
    --push) push=${2:?--push needs REGISTRY/PREFIX}; shift 2 ;;
    --insecure) tls=(--tls-verify=false); shift ;;
    --only) only=${2:?}; shift 2 ;;
    --local-prefix) prefix=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

build_one() {  # name arch image
  case "$1" in
    pilot) bash "$root/modules/pilot/build-image.sh" "$3" --arch "$2" ;;
    agent) bash "$root/scripts/build-agent-image.sh" "$3" --arch "$2" ;;
  esac
}

names=(pilot agent)
[ -n "$only" ] && names=("$only")
for name in "${names[@]}"; do
  list=$prefix$name:$tag
  podman manifest exists "$list" 2>/dev/null && podman manifest rm "$list" >/dev/null
  podman image exists "$list" && podman rmi "$list" >/dev/null
  podman manifest create "$list" >/dev/null
  for arch in ${arches//,/ }; do
    image=$prefix$name:$arch
    [ "$arch" = arm64 ] || [ "$arch" = amd64 ] || { echo "build-images.sh: --arch $arch: only amd64 and arm64" >&2; exit 2; }
    [ "$tag" != "$arch" ] || { echo "build-images.sh: --tag $tag is the name of the $arch image; choose another" >&2; exit 2; }
    bash "$root/scripts/build-base-image.sh" --arch "$arch" >/dev/null
    build_one "$name" "$arch" "$image"
    variant=()
    [ "$arch" = arm64 ] && variant=(--variant v8)
    podman manifest add --arch "$arch" "${variant[@]}" "$list" "containers-storage:$image" >/dev/null
  done
  if [ -n "$push" ]; then
    dest=$push/edge-$name:$tag
    digestfile=$(mktemp)
    podman manifest push --all --format oci --digestfile "$digestfile" "${tls[@]}" -q "$list" "docker://$dest"
    echo "pushed $dest@$(cat "$digestfile")"
    rm -f "$digestfile"
    # The registry holds the index now. A local list whose per-arch image is later rebuilt breaks
    # `podman images` (podman 4.3 cannot read the missing instance), so it is not kept.
    podman manifest rm "$list" >/dev/null
  else
    echo "built $list (${arches}): podman manifest push --all $list docker://REGISTRY/... publishes it"
  fi
done
