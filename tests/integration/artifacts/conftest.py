"""The desired-state tests' Device (real agent, broker, registry, podman, fleet keys)."""

from tests.integration.desired.conftest import device

__all__ = ["device"]
