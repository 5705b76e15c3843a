"""The device's one MQTT connection (aiomqtt, MQTT v5): connect, reconnect forever, subscribe to
the desired document and commands, keep presence, and let other components publish through it.

- Persistent session (clean_start=False + session expiry): the broker keeps the subscriptions
  and queues QoS 1 commands while the device is away; they arrive after the reconnect.
- Last will: presence "offline" (retained), published by the broker when the link dies.
- Reconnect: to one of several broker endpoints (`[mqtt] host`/`port`, then `endpoints`), chosen
  by shared/edge_shared/broker_endpoints.py: each endpoint has its own capped exponential backoff
  (shared/edge_shared/retry.py, equal jitter); a lost broker moves the session to the next endpoint that
  is due. The client id, clean_start=False and session expiry are the same on every endpoint, so a
  clustered broker (or bridged brokers) keeps one session per device. A connection that was up and
  then dropped starts a fresh backoff, so one long outage does not slow the next reconnect.
- Commands: P/D/commands/NAME carry a JSON request; the answer goes to the MQTT 5 response
  topic with the request's correlation data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.logs import get_logger
from edge_shared import protocol
from edge_shared.broker_endpoints import Choice, Endpoint, choose_endpoint
from edge_shared.mqtt_params import BrokerParams
from edge_shared.protocol import DeviceTopics
from edge_shared.retry import Retries

if TYPE_CHECKING:
    import aiomqtt

    from edge_shared.mqtt_client import CheckedClient

log = get_logger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
DesiredHandler = Callable[[bytes], Awaitable[None]]

DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600
MAX_COMMAND_BYTES = 256 * 1024
COMMAND_TIMEOUT_S = 60.0
COMMAND_REPLY_TIMEOUT_S = 30.0
RECONNECT_INITIAL_S = 1.0  # the first backoff of a failing broker endpoint; doubles up to the cap


class Publisher(Protocol):
    """What other components need from the session."""

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float | None = None
    ) -> None: ...


class ConnectionLost(Exception):
    """The link was up and then dropped (as opposed to a failed connect)."""


class CommandRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}

    def register(self, name: str, handler: CommandHandler) -> None:
        if not name or "/" in name or "+" in name or "#" in name:
            raise ValueError(f"command name {name!r}: expected a single topic level")
        self._handlers[name] = handler

    def get(self, name: str) -> CommandHandler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)


async def run_command(registry: CommandRegistry, name: str, payload: bytes) -> bytes:
    """Decode a request, run its handler, encode the answer. Never raises (except cancellation)."""
    handler = registry.get(name)
    if handler is None:
        return protocol.command_response_error(
            "unknown_command", f"unknown command {name!r}; known: {', '.join(registry.names())}"
        )
    if len(payload) > MAX_COMMAND_BYTES:
        return protocol.command_response_error(
            "too_large", f"request is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}"
        )
    try:
        request = json.loads(payload) if payload else {}
        args = request.get("args", {}) if isinstance(request, dict) else None
        if not isinstance(args, dict):
            raise ValueError("args must be an object")
    except (ValueError, RecursionError) as exc:
        return protocol.command_response_error(
            "bad_request", f'bad request: expected {{"schema": 1, "args": {{...}}}} ({exc})'
        )
    try:
        result = await asyncio.wait_for(handler(args), COMMAND_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return protocol.command_response_error("timeout", f"command {name} timed out after {COMMAND_TIMEOUT_S:.0f} s")
    except protocol.CommandFailed as exc:
        log.info("command %s refused: %s", name, exc, extra={"EVENT": "command.refused", "COMMAND": name})
        return protocol.command_response_error(exc.code, exc.description)
    except Exception as exc:
        log.warning("command %s failed: %s", name, exc, extra={"EVENT": "command.failed", "COMMAND": name})
        return protocol.command_response_error("internal_error", f"{type(exc).__name__}: {exc}")
    return protocol.command_response_ok(result)


def _raise_if_cancelling() -> None:
    """aiomqtt's connect and acknowledgement waits use asyncio.wait_for, which on Python 3.11 can
    swallow a cancellation that arrives just as the awaited result does (seen: a stop signal during
    the connect left the session running). The task still counts the request: honour it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class TwinSession:
    def __init__(
        self,
        params: BrokerParams | Callable[[], BrokerParams],
        topics: DeviceTopics,
        on_desired: DesiredHandler,
        *,
        reconnect_max_delay_s: float = 60.0,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        max_packet_bytes: int | None = None,
        on_endpoint: Callable[[Endpoint, bool], object] | None = None,
    ) -> None:
        # A factory is resolved in run(): reading keys and secrets is I/O that may fail, and
        # must not stop start() from handing over the stored deployment.
        self._params_source = params
        self._params: BrokerParams | None = params if isinstance(params, BrokerParams) else None
        self.topics = topics
        self.on_desired = on_desired
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.session_expiry_s = session_expiry_s
        self.max_packet_bytes = max_packet_bytes
        self._last_retry_error: str | None = None
        self.on_endpoint = on_endpoint  # told (endpoint, connected) on every connect and disconnect
        self.endpoint: Endpoint | None = None  # the broker connected to last
        self.commands = CommandRegistry()
        self.generation = 0  # counts successful connections
        self._client: CheckedClient | None = None
        self._connected = asyncio.Event()
        self._new_connection = asyncio.Event()
        self._down: asyncio.Future[None] | None = None  # resolved when the current connection is lost
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def params(self) -> BrokerParams:
        if self._params is None:
            source = self._params_source
            assert callable(source)
            self._params = source()
        return self._params

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_generation_after(self, generation: int) -> int:
        """Wait for a connection newer than `generation` (the reporter re-publishes then)."""
        while self.generation <= generation:
            event = self._new_connection
            await event.wait()
        return self.generation

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float | None = None
    ) -> None:
        """Publish and return after the broker acknowledged it (PUBACK for QoS 1). While offline
        this waits for the next connection; a publish cut off by a disconnect is sent again. One
        the broker refuses (a PUBACK with a failure reason: its ACL does not allow the topic) is
        logged as an error and not sent again, since the broker would refuse it again."""
        from edge_shared.mqtt_client import PublishRefused

        async with asyncio.timeout(timeout):
            while True:
                await self._connected.wait()
                try:
                    await self.publish_once(topic, payload, qos, retain=retain)
                    return
                except ConnectionLost as exc:
                    log.debug("publish to %s interrupted (%s); waiting for the broker", topic, exc)
                    await asyncio.sleep(0.05)
                except PublishRefused as exc:
                    log.error("%s; not sent again", exc, extra={"EVENT": "mqtt.publish_refused"})
                    return

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def publish_once(
        self, topic: str, payload: bytes, qos: int = 1, content_type: str | None = None, *, retain: bool = False
    ) -> None:
        """One attempt on the current connection: returns after the PUBACK, raises ConnectionLost
        when there is no connection or it drops first, PublishRefused (edge_shared.mqtt_client)
        when the broker answers with a failure reason. For callers that keep their own order and
        retry (the telemetry uplink and its in-flight window); `publish` is the retrying form.
        paho never fails a publish whose connection died, hence the race with `_down`."""
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client, down = self._client, self._down
        if client is None or down is None or down.done():
            raise ConnectionLost("not connected")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if content_type:
            props.ContentType = content_type
        task = asyncio.ensure_future(client.publish_checked(topic, payload, qos, retain, props))
        try:
            await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            raise ConnectionLost("connection lost before the broker acknowledged")
        try:
            task.result()
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(str(exc)) from exc

    def _mark_down(self, client: CheckedClient) -> None:
        if self._client is client:
            self._client = None
            self._connected.clear()
            if self._down is not None and not self._down.done():
                self._down.set_result(None)
            self._tell_endpoint(False)

    # ----------------------------------------------------------------- connection loop

    async def run(self) -> None:
        try:
            params = self.params
        except (OSError, KeyError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("cannot load MQTT credentials/TLS files: %s", exc, extra={"EVENT": "mqtt.credentials_failed"})
            raise
        log.debug("MQTT session for %s", ", ".join(str(e) for e in params.all_endpoints))
        try:
            await self._reconnect_forever()
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _reconnect_forever(self) -> None:
        """Connect to one endpoint at a time, chosen by broker_endpoints.choose_endpoint (each
        endpoint a retry cause with the agent's capped exponential backoff); a move to another
        endpoint is logged once per outage."""
        import aiomqtt

        endpoints = self.params.all_endpoints
        retries = Retries(initial_s=RECONNECT_INITIAL_S, cap_s=self.reconnect_max_delay_s)
        index = choose_endpoint(len(endpoints), {}, time.monotonic()).index
        attempts = 0  # consecutive failed connects, across endpoints
        move_logged = False
        while True:
            endpoint = endpoints[index]
            try:
                await self._connect_and_serve(endpoint, functools.partial(retries.succeeded, str(index)))
            except ConnectionLost as exc:
                attempts, move_logged = 0, False
                retries.failed(str(index), str(exc), time.monotonic())
                log.warning("lost the broker %s (%s); reconnecting", endpoint, exc,
                            extra={"EVENT": "mqtt.disconnected", "BROKER": str(endpoint)})
                choice = self._choose(endpoints, retries)
                delay = max(random.uniform(0.1, 1.0), choice.wait_s)  # spread a fleet's reconnects
            except (aiomqtt.MqttError, OSError) as exc:
                attempts += 1
                retries.failed(str(index), str(exc), time.monotonic())
                choice = self._choose(endpoints, retries)
                # Equal jitter: half the backoff at least, so delays grow; the rest spreads a fleet.
                delay = choice.wait_s * random.uniform(0.5, 1.0)
                # A persistent failure is one WARNING (first attempt, or a different error), then DEBUG.
                news = attempts == 1 or str(exc) != self._last_retry_error
                self._last_retry_error = str(exc)
                (log.warning if news else log.debug)(
                    "cannot connect to broker %s (%s); retry %d in %.1f s%s",
                    endpoint,
                    exc,
                    attempts,
                    delay,
                    f" at {endpoints[choice.index]}" if choice.index != index else "",
                    extra={"EVENT": "mqtt.retry", "BROKER": str(endpoint)},
                )
            if choice.index != index:
                (log.debug if move_logged else log.warning)(
                    "broker %s is gone; moving to %s (endpoint %d of %d)",
                    endpoint,
                    endpoints[choice.index],
                    choice.index + 1,
                    len(endpoints),
                    extra={"EVENT": "mqtt.endpoint_switch", "BROKER": str(endpoints[choice.index])},
                )
                move_logged = True
            index = choice.index
            await asyncio.sleep(delay)

    @staticmethod
    def _choose(endpoints: tuple[Endpoint, ...], retries: Retries) -> Choice:
        failures = {i: f for i in range(len(endpoints)) if (f := retries.get(str(i))) is not None}
        return choose_endpoint(len(endpoints), failures, time.monotonic())

    async def _connect_and_serve(self, endpoint: Endpoint, on_connected: Callable[[], object]) -> None:
        import aiomqtt

        from edge_shared.mqtt_client import make_client

        will = aiomqtt.Will(
            self.topics.presence, protocol.presence_payload(protocol.PRESENCE_OFFLINE), qos=1, retain=True
        )
        params = self.params.at(endpoint)
        client = make_client(
            params,
            will=will,
            persistent=True,
            session_expiry_s=self.session_expiry_s,
            max_packet_bytes=self.max_packet_bytes,
        )
        await client.__aenter__()  # raises MqttError when the broker is unreachable: retried
        try:
            try:
                _raise_if_cancelling()
                on_connected()
                await self._on_connected(client, params, endpoint)
                _raise_if_cancelling()
                async for message in client.messages:
                    await self._dispatch(client, message)
                raise aiomqtt.MqttError("message stream ended")
            except aiomqtt.MqttError as exc:
                raise ConnectionLost(str(exc)) from exc
            except asyncio.CancelledError:
                await self._say_goodbye(client)
                raise
        finally:
            self._mark_down(client)
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def _on_connected(self, client: CheckedClient, params: BrokerParams, endpoint: Endpoint) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        await client.subscribe(
            [
                (self.topics.desired, SubscribeOptions(qos=1)),
                (self.topics.commands_filter, SubscribeOptions(qos=1)),
            ]
        )
        await client.publish(
            self.topics.presence, protocol.presence_payload(protocol.PRESENCE_ONLINE), qos=1, retain=True
        )
        self._client = client
        self._down = asyncio.get_running_loop().create_future()
        self.endpoint = endpoint
        self.generation += 1
        self._connected.set()
        self._tell_endpoint(True)  # before the reporter's re-publish below, so it carries it
        event, self._new_connection = self._new_connection, asyncio.Event()
        event.set()
        log.info(
            "connected to broker %s as %s%s",
            endpoint,
            params.client_id,
            " (TLS)" if params.tls_context else "",
            extra={"EVENT": "mqtt.connected", "BROKER": str(endpoint)},
        )

    def _tell_endpoint(self, connected: bool) -> None:
        if self.on_endpoint is not None and self.endpoint is not None:
            try:
                self.on_endpoint(self.endpoint, connected)
            except Exception:  # a bug in the reporting must not take the session down
                log.exception("broker endpoint callback failed", extra={"EVENT": "mqtt.internal_error"})

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        """A clean disconnect suppresses the last will, so say "offline" ourselves."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                client.publish(
                    self.topics.presence, protocol.presence_payload(protocol.PRESENCE_OFFLINE), qos=1, retain=True
                ),
                2.0,
            )

    async def _dispatch(self, client: CheckedClient, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        if topic == self.topics.desired:
            await self.on_desired(bytes(payload))
            return
        name = self.topics.command_name(topic)
        if name is None:
            log.debug("ignoring message on %s", topic)
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        task = asyncio.create_task(self._serve_command(client, name, bytes(payload), response_topic, correlation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_command(
        self,
        client: CheckedClient,
        name: str,
        payload: bytes,
        response_topic: str | None,
        correlation: bytes | None,
    ) -> None:
        from edge_shared.mqtt_client import PublishRefused, publish_properties

        log.info("command %s received", name, extra={"EVENT": "command.received", "COMMAND": name})
        answer = await run_command(self.commands, name, payload)
        if not response_topic:
            log.info("command %s has no response topic; answer dropped", name, extra={"EVENT": "command.no_reply"})
            return
        props = publish_properties(correlation=correlation)
        try:
            # Answer on whatever connection is current; a lost answer is visible to the caller
            # as a timeout, and commands are designed to be safe to repeat.
            current = self._client or client
            async with asyncio.timeout(COMMAND_REPLY_TIMEOUT_S):
                await current.publish_checked(response_topic, answer, 1, False, props)
        except PublishRefused as exc:  # the requester named a topic this device may not write
            log.warning("answer to command %s not delivered: %s", name, exc,
                        extra={"EVENT": "command.reply_refused", "COMMAND": name})
        except Exception as exc:
            log.debug("answer to command %s not delivered: %s", name, exc)
