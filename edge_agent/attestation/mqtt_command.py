"""Attestation commands over MQTT: the fleet half (`request`, used by edgectl) and `dispatch`,
an in-process path with exactly the envelope the device's command registry uses.

On the device the commands are served by the twin session's one MQTT connection: the daemon
registers `AttestationService.handlers()` in its command registry (docs/protocol.md).
Requests go to ``P/D/commands/NAME`` (QoS 1) with an MQTT5 response topic and correlation data.
Answer envelope: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code", "description"}}``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.twin import protocol
from edge_agent.twin.protocol import CommandFailed
from edge_agent.twin.session import CommandRegistry, run_command

__all__ = ["CommandFailed", "Handler", "dispatch", "request"]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def dispatch(handler: Handler, payload: bytes) -> dict[str, Any]:
    """Run one handler on a raw JSON arguments object, through the same code the device's MQTT
    command registry runs; returns the decoded answer envelope."""
    registry = CommandRegistry()
    registry.register("command", handler)
    answer = json.loads(await run_command(registry, "command", b'{"schema": 1, "args": ' + payload + b"}"))
    answer.pop("schema", None)
    return dict(answer)


async def request(
    host: str,
    port: int,
    prefix: str,
    device: str,
    command: str,
    payload: Mapping[str, Any],
    timeout: float = 30.0,
    **client_kwargs: Any,
) -> dict[str, Any]:
    """Fleet side: send one command and wait for its answer. Raises CommandFailed or TimeoutError."""
    client_id = f"edgectl-{secrets.token_hex(6)}"
    response_topic = f"{prefix}/fleet/responses/{client_id}"
    correlation = secrets.token_bytes(16)
    async with aiomqtt.Client(
        host, port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, **client_kwargs
    ) as client:
        await client.subscribe(response_topic, qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        await client.publish(
            f"{prefix}/{device}/commands/{command}", protocol.command_request(dict(payload)), qos=1, properties=props
        )
        try:
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    if getattr(message.properties, "CorrelationData", None) != correlation:
                        continue
                    answer = json.loads(message.payload if isinstance(message.payload, bytes | str) else b"{}")
                    result = protocol.command_answer_result(answer)
                    return result if isinstance(result, dict) else {"value": result}
        except TimeoutError:
            raise TimeoutError(f"device {device} did not answer {command} within {timeout:.0f} s (offline?)") from None
    raise TimeoutError(f"connection closed before device {device} answered {command}")
