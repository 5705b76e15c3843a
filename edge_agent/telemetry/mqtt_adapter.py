"""A minimal MQTT session for the uplink (aiomqtt), until the twin's shared session replaces it.

Connects with its own client id (<client_id>-telemetry), reconnects forever with capped backoff,
and implements uplink.Publisher: publish() returns after PUBACK and raises if the connection
drops first. Known gap: aiomqtt does not expose a PUBACK's reason code, so a broker that refuses
a publish with a PUBACK reason >= 0x80 (e.g. an ACL) is taken as success; the shared session
must check it.
"""

from __future__ import annotations

import asyncio
import math
import random

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.logs import get_logger
from edge_agent.mqtt_params import BrokerParams

log = get_logger(__name__)


class PublishError(Exception):
    pass


class AiomqttPublisher:
    def __init__(self, params: BrokerParams, client_id: str, reconnect_max_delay_s: float = 60.0) -> None:
        self.params = params
        self.client_id = client_id
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self._down: asyncio.Future[None] | None = None

    async def wait_connected(self) -> None:
        await self._up.wait()

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def run(self) -> None:
        delay = 0.5
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with aiomqtt.Client(
                    self.params.host,
                    self.params.port,
                    identifier=self.client_id,
                    username=self.params.username,
                    password=self.params.password,
                    tls_context=self.params.tls_context,
                    keepalive=self.params.keepalive,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=10,
                    max_inflight_messages=64,
                ) as client:
                    self._client = client
                    self._down = loop.create_future()
                    self._up.set()
                    delay = 0.5
                    log.info("telemetry uplink connected", extra={"EVENT": "telemetry.connected"})
                    try:
                        async for _ in client.messages:  # ends with MqttError when the connection drops
                            pass
                    finally:
                        self._lost()
            except aiomqtt.MqttError as exc:
                log.info("telemetry uplink not connected: %s", exc, extra={"EVENT": "telemetry.disconnected"})
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_delay_s)

    def _lost(self) -> None:
        self._up.clear()
        self._client = None
        if self._down is not None and not self._down.done():
            self._down.set_result(None)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, content_type: str | None = None) -> None:
        client, down = self._client, self._down
        if client is None or down is None or down.done():
            raise PublishError("not connected")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if content_type:
            props.ContentType = content_type
        task = asyncio.ensure_future(client.publish(topic, payload, qos=qos, properties=props, timeout=math.inf))
        try:
            done, _ = await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            try:
                task.result()
            except aiomqtt.MqttError as exc:
                raise PublishError(str(exc)) from exc
            return
        task.cancel()
        raise PublishError("connection lost before PUBACK")
