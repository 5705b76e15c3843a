"""Attestation commands over MQTT: `dispatch`, an in-process path with exactly the envelope the
device's command registry uses (tests and tools), and the shared command types.

On the device the commands are served by the twin session's one MQTT connection: the daemon
registers `AttestationService.handlers()` in its command registry (docs/protocol.md).
Requests go to ``P/D/commands/NAME`` (QoS 1) with an MQTT5 response topic and correlation data.
Answer envelope: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code", "description"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.twin.session import CommandRegistry, run_command
from edge_shared.protocol import CommandFailed

__all__ = ["CommandFailed", "Handler", "dispatch"]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def dispatch(handler: Handler, payload: bytes) -> dict[str, Any]:
    """Run one handler on a raw JSON arguments object, through the same code the device's MQTT
    command registry runs; returns the decoded answer envelope."""
    registry = CommandRegistry()
    registry.register("command", handler)
    answer = json.loads(await run_command(registry, "command", b'{"schema": 1, "args": ' + payload + b"}"))
    answer.pop("schema", None)
    return dict(answer)
