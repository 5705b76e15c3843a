"""One way to build an MQTT v5 client from BrokerParams, used by the device's twin session and
by edgectl, so TLS, credentials and session settings are set up in exactly one place."""

from __future__ import annotations

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.mqtt_params import BrokerParams

# Bound on messages waiting in the client's in-memory queue; the broker keeps the rest (QoS 1).
MAX_QUEUED_INCOMING = 1000


def make_client(
    params: BrokerParams,
    *,
    will: aiomqtt.Will | None = None,
    persistent: bool = False,
    session_expiry_s: int = 0,
    timeout: float = 10.0,
) -> aiomqtt.Client:
    """An unconnected client. `persistent` keeps the broker-side session (subscriptions and
    queued QoS 1 messages) for `session_expiry_s` seconds after a disconnect."""
    connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        connect_props.SessionExpiryInterval = session_expiry_s
    return aiomqtt.Client(
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
        max_queued_incoming_messages=MAX_QUEUED_INCOMING,
    )


def publish_properties(*, response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props
