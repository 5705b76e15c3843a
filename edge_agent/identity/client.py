"""One enrollment or renewal exchange with the fleet's enrollment service (edge_agent/identity/
wire.py): a separate short MQTT connection, with the claim certificate (enrollment) or the
device's current certificate (renewal), under a random client id. The request is sent again
every `retry_s` until the service answers "issued" or "refused"; "pending" (waiting for an
operator) keeps the device waiting, as long as it takes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import aiomqtt

from edge_agent.logs import get_logger
from edge_shared import enrollment as wire
from edge_shared.mqtt_client import make_client
from edge_shared.mqtt_params import BrokerParams

log = get_logger(__name__)


class EnrollmentRefused(Exception):
    """The service refused the request; the message is its reason."""


async def exchange(
    host: str,
    port: int,
    tls: ssl.SSLContext,
    prefix: str,
    request: wire.EnrollRequest,
    *,
    retry_s: float,
    on_pending: Callable[[str], object] = lambda reason: None,
    keepalive: int = 30,
) -> wire.EnrollAnswer:
    """Send `request` until an "issued" answer comes (returned) or a "refused" one
    (EnrollmentRefused). Connection failures propagate (aiomqtt.MqttError); the caller retries."""
    client_id = wire.new_client_id()
    params = BrokerParams(host, port, client_id, None, None, tls, keepalive)
    payload = wire.encode(request)
    async with make_client(params, timeout=max(10.0, retry_s)) as client:
        await client.subscribe(wire.answer_topic(prefix, client_id), qos=1)
        messages = client.messages
        while True:
            await client.publish_checked(wire.request_topic(prefix, client_id), payload, qos=1)
            try:
                async with asyncio.timeout(retry_s):
                    async for message in messages:
                        raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                        try:
                            answer = wire.decode_answer(bytes(raw))
                        except wire.WireError as exc:
                            log.warning("ignoring a malformed enrollment answer: %s", exc,
                                        extra={"EVENT": "identity.bad_answer"})
                            continue
                        if answer.device_id != request.device_id:
                            continue
                        if answer.status == "issued":
                            return answer
                        if answer.status == "refused":
                            raise EnrollmentRefused(answer.reason)
                        on_pending(answer.reason)
            except TimeoutError:
                continue  # ask again: the service may have been away, or an operator approved


__all__ = ["EnrollmentRefused", "aiomqtt", "exchange"]
