"""A minimal MQTT v5 request/response path for the attestation commands, kept apart on purpose.

Contracts (notes/contracts.md): requests on ``P/D/commands/NAME`` (QoS 1) with an MQTT5 response
topic and correlation data; the answer goes to the response topic with the same correlation data.
The twin's session owns the device's one MQTT connection; until its command registry lands, this
module serves the attestation commands on a second connection (client id ``<id>-attestation``).
At merge, register `AttestationService.handlers()` with the twin's registry and drop
`serve_commands`. `request` is the fleet half used by edgectl.

Answer envelope: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code", "description"}}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.logs import get_logger
from edge_agent.mqtt_params import BrokerParams

log = get_logger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST_BYTES = 64 * 1024


class CommandFailed(Exception):
    """A command answered with an error (fleet side), or a handler refused a request (device side)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


async def dispatch(handler: Handler, payload: bytes) -> dict[str, Any]:
    """Run one handler on a raw request; always returns an answer envelope."""
    if len(payload) > MAX_REQUEST_BYTES:
        return _error("bad_request", f"request is {len(payload)} bytes; at most {MAX_REQUEST_BYTES}")
    try:
        request = json.loads(payload) if payload else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error("bad_request", "request is not JSON")
    if not isinstance(request, dict):
        return _error("bad_request", "request must be a JSON object")
    try:
        return {"ok": True, "result": await handler(request)}
    except CommandFailed as exc:
        return _error(exc.code, exc.description)
    except Exception as exc:
        log.exception("command handler failed", extra={"EVENT": "command.failed"})
        return _error("internal_error", f"{type(exc).__name__}: {exc}")


def _error(code: str, description: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "description": description}}


async def serve_commands(
    params: BrokerParams, prefix: str, device_id: str, handlers: Mapping[str, Handler], max_delay_s: float = 60.0
) -> None:
    """Serve `handlers` on P/D/commands/NAME until cancelled; reconnects with capped backoff."""
    base = f"{prefix}/{device_id}/commands/"
    delay = 1.0
    while True:
        try:
            async with aiomqtt.Client(
                params.host,
                params.port,
                identifier=f"{params.client_id}-attestation",
                username=params.username,
                password=params.password,
                tls_context=params.tls_context,
                keepalive=params.keepalive,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                for name in handlers:
                    await client.subscribe(base + name, qos=1)
                log.info("serving %s on %s*", ", ".join(handlers), base, extra={"EVENT": "attestation.commands_ready"})
                delay = 1.0
                async for message in client.messages:
                    await _answer(client, message, base, handlers)
        except aiomqtt.MqttError as exc:
            log.warning("attestation command connection lost (%s); retrying in %.0f s", exc, delay,
                        extra={"EVENT": "attestation.mqtt_retry"})
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, max_delay_s)


async def _answer(client: aiomqtt.Client, message: aiomqtt.Message, base: str, handlers: Mapping[str, Handler]) -> None:
    name = str(message.topic).removeprefix(base)
    props = message.properties
    response_topic = getattr(props, "ResponseTopic", None)
    if not response_topic:
        log.warning("command %s without a response topic ignored", name, extra={"EVENT": "command.no_response_topic"})
        return
    handler = handlers.get(name)
    payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
    if handler is None:
        answer = _error("unknown_command", f"no command {name!r}")
    else:
        answer = await dispatch(handler, payload)
    out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    correlation = getattr(props, "CorrelationData", None)
    if correlation is not None:
        out.CorrelationData = correlation
    await client.publish(response_topic, json.dumps(answer).encode(), qos=1, properties=out)


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
            f"{prefix}/{device}/commands/{command}", json.dumps(dict(payload)).encode(), qos=1, properties=props
        )
        try:
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    if getattr(message.properties, "CorrelationData", None) != correlation:
                        continue
                    answer = json.loads(message.payload if isinstance(message.payload, bytes | str) else b"{}")
                    if answer.get("ok"):
                        result = answer.get("result")
                        return result if isinstance(result, dict) else {"value": result}
                    error = answer.get("error") or {}
                    raise CommandFailed(str(error.get("code", "error")), str(error.get("description", answer)))
        except TimeoutError:
            raise TimeoutError(f"device {device} did not answer {command} within {timeout:.0f} s (offline?)") from None
    raise TimeoutError(f"connection closed before device {device} answered {command}")
