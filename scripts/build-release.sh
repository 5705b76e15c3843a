#!/usr/bin/env bash
# Build an agent release image and push it: the wheelhouses of one edge-agent version, one folder
# per platform, in an image with no program in it (FROM scratch):
#   /wheelhouse/x86_64-cp311/*.whl   /wheelhouse/aarch64-cp311/*.whl
# A device installs the folder named after its own `uname -m` and Python (docs/operations.md,
# "Agent updates"). Sign the pushed image like a module image:
#   edgectl sign-image REF --key image.key
#
# Usage: scripts/build-release.sh --version V --image REGISTRY/REPO:TAG --wheelhouse DIR [--wheelhouse DIR]...
#                                 [--platform aarch64|x86_64]... [--insecure-registry]
# Each DIR is a wheelhouse from `scripts/build-wheel.sh DIR --with-deps`, built on its target
# platform; the folder it lands in is named after the platform its edge-agent wheel was built on
# (DIR's basename when it looks like MACHINE-cpXY, e.g. aarch64-cp311; else this machine's).
# --platform MACHINE adds a MACHINE-cp311 folder made here: the edge-agent wheel of the first DIR
# (pure Python) and its dependencies downloaded as MACHINE wheels (scripts/build-wheel.sh
# --platform; nothing compiled), e.g. --platform aarch64 for Raspberry Pis next to an x86_64 DIR.
# Prints the pushed image's digest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/podman-env.sh
. "$here/podman-env.sh"

version= image= tls=true
wheelhouses=() machines=()
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --wheelhouse) wheelhouses+=("$2"); shift 2 ;;
    --platform) machines+=("$2"); shift 2 ;;
    --insecure-registry) tls=false; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-release.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$version" ] && [ -n "$image" ] && [ ${#wheelhouses[@]} -gt 0 ] \
  || { echo "build-release.sh: --version, --image and at least one --wheelhouse are required (see --help)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/edge-release.XXXXXX)
trap 'rm -rf "$work"' EXIT
this_platform=$(python3 -c 'import platform, sys; print(f"{platform.machine()}-cp{sys.version_info[0]}{sys.version_info[1]}")')
printf 'FROM scratch\nLABEL org.opencontainers.image.title=edge-agent-release org.opencontainers.image.version=%s\n' \
  "$version" > "$work/Containerfile"
for dir in "${wheelhouses[@]}"; do
  ls "$dir"/edge_agent-"$version"-*.whl > /dev/null 2>&1 \
    || { echo "build-release.sh: $dir has no edge_agent-$version wheel" >&2; exit 1; }
  name=$(basename "$dir")
  case "$name" in *-cp[0-9]*) ;; *) name=$this_platform ;; esac
  mkdir -p "$work/wheelhouse/$name"
  # Only this version's agent wheel: a wheelhouse reused across releases may hold older ones.
  # The shared leaf the agent depends on (edge-shared, pinned to one version by the agent's wheel)
  # comes with the other dependencies.
  ls "$dir"/edge_shared-*.whl > /dev/null 2>&1 \
    || { echo "build-release.sh: $dir has no edge_shared wheel (scripts/build-wheel.sh makes it with the agent's)" >&2; exit 1; }
  find "$dir" -maxdepth 1 -name '*.whl' ! -name 'edge_agent-*' -exec cp {} "$work/wheelhouse/$name/" \;
  cp "$dir"/edge_agent-"$version"-*.whl "$work/wheelhouse/$name/"
  echo "COPY wheelhouse/$name /wheelhouse/$name" >> "$work/Containerfile"
done
for machine in ${machines[@]+"${machines[@]}"}; do
  name=$machine-cp311
  [ -d "$work/wheelhouse/$name" ] && { echo "build-release.sh: $name is there twice" >&2; exit 2; }
  agent_wheel=$(ls "${wheelhouses[0]}"/edge_agent-"$version"-*.whl | head -n1)
  bash "$here/build-wheel.sh" "$work/wheelhouse/$name" --platform "$machine" --agent-wheel "$agent_wheel" > /dev/null
  echo "COPY wheelhouse/$name /wheelhouse/$name" >> "$work/Containerfile"
done
local_tag="localhost/edge-agent-release-build:$version"
podman build -q -t "$local_tag" "$work" > /dev/null
podman push -q --tls-verify="$tls" --digestfile "$work/digest" "$local_tag" "$image"
podman rmi -f "$local_tag" > /dev/null
cat "$work/digest"; echo
