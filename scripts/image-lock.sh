# Sourced by the image build scripts: `image_lock NAME` holds an exclusive lock for building NAME
# until the script exits, so two builds of one image (the test suite's two workers, a test and the
# background build scripts/test starts) never run at once: the second waits, then finds the image.
image_lock() {
  local dir=${EDGE_DEV_DIR:-/var/tmp/edge-agent-dev}
  mkdir -p "$dir"
  exec 8>"$dir/build-$(printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_').lock"
  flock 8
}
