"""What the daemon runs: components with a small lifecycle.

- `start()` loads local state only (no network); READY=1 is sent after every component started,
  so "ready" means the last accepted deployment is known and being acted on.
- `run()` is the long-running part; it returns or raises only on cancellation or failure. A
  failure is logged and the component is restarted with a capped backoff (never given up).
- `apply_config()` takes a validated new config on reload (SIGHUP).
- `stalled()` returns a reason when the component is stuck (an operation far past its timeout);
  the watchdog then stops pinging systemd, which restarts the agent.
"""

from __future__ import annotations

from typing import Protocol

from edge_agent.config import AgentConfig


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def apply_config(self, config: AgentConfig) -> None: ...

    def stalled(self) -> str | None: ...


class BaseComponent:
    """Defaults for components that need no start, reload or stall logic."""

    name = "component"

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def apply_config(self, config: AgentConfig) -> None:
        return None

    def stalled(self) -> str | None:
        return None
