# Sourced by scripts and the test suite. On the dev/CI machines podman's default runtime
# (crun) fails ("setrlimit RLIMIT_NOFILE: Operation not permitted") and default ulimits are too
# high, so point podman at a
# containers.conf that uses runc. On a real device none of this is needed: unset EDGE_DEV_PODMAN_CONF
# or simply don't source this file.
_edge_conf_dir=${EDGE_DEV_DIR:-/var/tmp/edge-agent-dev}
mkdir -p "$_edge_conf_dir"
if [ ! -f "$_edge_conf_dir/containers.conf" ]; then
  cat > "$_edge_conf_dir/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
[engine]
runtime = "runc"
CONF
fi
export CONTAINERS_CONF="$_edge_conf_dir/containers.conf"
