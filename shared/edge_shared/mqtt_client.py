"""One way to build an MQTT v5 client from BrokerParams, used by the device's twin session and
by edgectl, so TLS, credentials and session settings are set up in exactly one place.

`CheckedClient.publish_checked` is a QoS 1 publish that fails when the broker refuses the
message. aiomqtt 2.x resolves a publish on any PUBACK and drops its reason code, so a message the
broker's ACL refused (MQTT v5 PUBACK 0x87 "Not authorized", what mosquitto 2 answers) looked
delivered, and the telemetry uplink deleted records the broker never took. The reason code is
read from paho's on_publish, which aiomqtt routes through its `_on_publish` method and whose
paho client it keeps as `_client`: both internal to aiomqtt, which is pinned below 3, and
tests/integration/telemetry/test_refused.py fails against a real mosquitto if that changes.

Every client turns Nagle's algorithm off on its socket (TCP_NODELAY; neither paho nor mosquitto
does by default). MQTT sends small packets in both directions; with Nagle on, a packet written
while the previous one waits for its ACK is held until the peer's delayed ACK, 40 ms on Linux:
measured as 40-45 ms on 1% to all of the desired documents (bench/twin_latency.py), depending on
whether the broker coalesces its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_shared.mqtt_params import BrokerParams

# Bound on messages waiting in the client's in-memory queue; the broker keeps the rest (QoS 1).
MAX_QUEUED_INCOMING = 1000


class PublishRefused(Exception):
    """The broker answered a publish with a failure reason code: it did not take the message."""

    def __init__(self, topic: str, reason: str, code: int) -> None:
        super().__init__(f"the broker refused the publish to {topic}: {reason} (reason code 0x{code:02x})")
        self.topic = topic
        self.reason = reason
        self.code = code


class CheckedClient(aiomqtt.Client):
    """aiomqtt.Client plus `publish_checked` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}

    def _on_socket_open(self, client: paho_mqtt.Client, userdata: Any, sock: Any) -> None:
        no_delay(sock)
        super()._on_socket_open(client, userdata, sock)

    def _on_publish(
        self, client: paho_mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        waiter = self._acks.pop(mid, None)
        if waiter is None:  # a plain aiomqtt publish
            super()._on_publish(client, userdata, mid, reason_code, properties)
        elif not waiter.done():
            waiter.set_result(reason_code)

    async def publish_checked(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties: Properties | None = None
    ) -> None:
        """Publish and return after the broker's acknowledgement; raise PublishRefused when it
        carries a failure reason code, aiomqtt.MqttCodeError when paho cannot send at all. A
        lost connection is not noticed here (paho keeps the message for a resend): callers race
        this against their own disconnect signal, as TwinSession does."""
        if qos == 0:
            await self.publish(topic, payload, qos=0, retain=retain, properties=properties)
            return
        waiter: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        # paho reads the PUBACK in a later event-loop callback: registering the waiter right after
        # publish() returns, with no await in between, cannot miss it.
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
        self._acks[info.mid] = waiter
        try:
            reason = await waiter
        finally:
            self._acks.pop(info.mid, None)
        if reason.is_failure:
            raise PublishRefused(topic, str(reason), int(reason.value))


def no_delay(sock: Any) -> None:
    """TCP_NODELAY on a TCP socket (plain or TLS); anything else (a WebSocket wrapper) is left alone."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(
    params: BrokerParams,
    *,
    will: aiomqtt.Will | None = None,
    persistent: bool = False,
    session_expiry_s: int = 0,
    timeout: float = 10.0,
    max_packet_bytes: int | None = None,
    max_inflight: int | None = None,
    max_queued_incoming: int = MAX_QUEUED_INCOMING,
) -> CheckedClient:
    """An unconnected client. `persistent` keeps the broker-side session (subscriptions and
    queued QoS 1 messages) for `session_expiry_s` seconds after a disconnect. `max_packet_bytes`
    is sent as MQTT 5 Maximum Packet Size: the broker drops (does not send) anything larger.
    `max_inflight` bounds QoS 1 publishes sent and not yet acknowledged (paho's default is 20;
    the broker's Receive Maximum still applies). `max_queued_incoming` bounds received messages
    not yet read (0: no bound); aiomqtt discards what does not fit, so a client that subscribes to
    a burst of retained messages (edgectl reading a whole fleet) must not bound it below the burst."""
    connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        connect_props.SessionExpiryInterval = session_expiry_s
    if max_packet_bytes is not None:
        connect_props.MaximumPacketSize = max_packet_bytes
    return CheckedClient(
        params.host,
        params.port,
        username=params.username,
        password=params.password,
        identifier=params.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        clean_start=not persistent,
        properties=connect_props,
        tls_context=params.tls_context,
        keepalive=params.keepalive,
        timeout=timeout,
        max_queued_incoming_messages=max_queued_incoming,
        max_inflight_messages=max_inflight,
    )


def publish_properties(*, response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props
