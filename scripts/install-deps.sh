#!/usr/bin/env bash
# Install everything the agent, its tests and the quickstart need on a fresh Debian bookworm
# machine: Debian packages (podman, mosquitto, registry, swtpm, tpm2-tools, ...) and a Python
# virtualenv in .venv with the agent and the pilot module. Idempotent and quick when all is there.
# Source it (". scripts/install-deps.sh") to get .venv on PATH and the dev podman settings.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

APT_PACKAGES=(
  podman runc uidmap slirp4netns fuse-overlayfs   # module containers (runc: crun fails on these machines)
  mosquitto mosquitto-clients                      # MQTT broker for tests and the quickstart
  docker-registry                                  # local OCI registry
  swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config  # software TPM (swtpm_setup + swtpm_localca make EK certificates); libtss2-dev builds tpm2-pytss
  faketime                                         # clock tests: the agent started in 1970 or a year ahead
  busybox-static debootstrap                       # tiny test images and the local Debian base image
  qemu-user-static binfmt-support                  # linux/arm64 images run here under emulation
  fuse3                                            # tests: the power-cut filesystem (libfuse3, fusermount3)
  systemd openssl iproute2 ca-certificates gcc python3-dev
  chromium chromium-driver                         # headless browser for the dashboard's browser tests
  stress-ng                                        # keeps cores busy to show a test does not depend on speed
)

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

venv="$repo/.venv"
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  "$py" -m venv "$venv"
fi

# linux/arm64 under emulation: qemu-user-static's aarch64 handler registered with binfmt_misc
# (mounted first where it is not), and an arm64 busybox for the arm64 test images, from
# Debian's busybox-static:arm64 (devinfra/multiarch.py).
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/qemu-aarch64" ]; then
  echo "registering the qemu-aarch64 binfmt handler"
  # Not fatal here (everything else still installs); the arm64 tests then fail saying this.
  { [ -e "$binfmt/register" ] || $SUDO mount -t binfmt_misc binfmt_misc "$binfmt"; } \
    && $SUDO update-binfmts --enable qemu-aarch64 \
    || echo "WARNING: cannot register qemu-aarch64 with binfmt_misc (a privileged machine is needed):" \
      "arm64 images will not run here" >&2
fi
arm64_busybox="$venv/share/arm64/busybox"
if [ ! -x "$arm64_busybox" ]; then
  echo "fetching busybox-static:arm64"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -q
  fi
  deb_dir=$(mktemp -d)
  (cd "$deb_dir" && apt-get download -q busybox-static:arm64 2>/dev/null)
  dpkg-deb -x "$deb_dir"/busybox-static_*_arm64.deb "$deb_dir/root"
  mkdir -p "$(dirname "$arm64_busybox")"
  cp "$deb_dir/root/bin/busybox" "$arm64_busybox"
  rm -rf "$deb_dir"
fi
# Reinstall when what we install from changed, or when the install is not really there: the stamp
# alone is not proof (a `pip --prefix`, `pip uninstall` or a moved checkout leaves it in place).
stamp="$venv/.edge-deps"
shopt -s nullglob
module_projects=("$repo"/modules/*/pyproject.toml)
shopt -u nullglob
# The three distributions: the device agent (pyproject.toml), the shared leaf (shared/) and the
# fleet side (fleet/), each installed editable.
side_projects=("$repo/shared/pyproject.toml" "$repo/fleet/pyproject.toml")
want=$(cat "$repo/pyproject.toml" "${side_projects[@]}" "${module_projects[@]}" | sha256sum | cut -d' ' -f1)
installed_here() {
  # The console scripts exist and run this checkout's code (editable install of $repo).
  local tool
  for tool in edge-agent edgectl; do
    [ -x "$venv/bin/$tool" ] || { echo "$venv/bin/$tool is missing"; return 1; }
  done
  for mod in "${module_projects[@]}"; do
    local script
    script=$(sed -n 's/^\([A-Za-z0-9_-]*\) *= *"[A-Za-z0-9_.]*:[A-Za-z0-9_]*"$/\1/p' "$mod" | head -n1)
    if [ -n "$script" ] && [ ! -x "$venv/bin/$script" ]; then echo "$venv/bin/$script is missing"; return 1; fi
  done
  local where expected
  where=$("$venv/bin/python" -c 'import edge_agent.cli, edgectl.cli, edge_shared
print(edge_agent.__file__, edgectl.__file__, edge_shared.__file__)' 2>/dev/null) \
    || { echo "edge_agent, edgectl or edge_shared does not import in $venv"; return 1; }
  expected="$repo/edge_agent/__init__.py $repo/fleet/edgectl/__init__.py $repo/shared/edge_shared/__init__.py"
  [ "$where" = "$expected" ] || { echo "the packages in $venv are $where, not this checkout's"; return 1; }
}
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && ! why=$(installed_here); then
  echo "the agent is not installed in $venv ($why): reinstalling"
  rm -f "$stamp"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing Python packages into $venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  extras=(-e "$repo/shared" -e "$repo/fleet[attest]" -e "$repo[dev,tpm]")
  for mod in "${module_projects[@]}"; do
    extras+=(-e "$(dirname "$mod")[train]")
  done
  # torch: take the CPU build (a plain 'torch' would pull several GB of CUDA packages).
  if [ ${#module_projects[@]} -gt 0 ] && grep -q torch "${module_projects[@]}"; then
    "$venv/bin/pip" install -q "torch==2.13.0"
  fi
  "$venv/bin/pip" install -q "${extras[@]}"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
