"""edgectl: the fleet side of edge-agent (keys, signing, deploy, rollouts, compare, devices,
attestation verifier). Imports edge_shared, never the device agent (edge_agent)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgectl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
