"""The fleet side of the twin protocol (what edgectl does over MQTT), usable from Python too.

Reading retained state: subscribe, then send a marker message to our own response topic and
wait for it to come back. The broker writes the retained messages of a subscription before it
handles a later publish from the same client, so when the marker arrives every retained
message is already here; no guessing at timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edge_shared import protocol
from edge_shared.document import DOCUMENT_PAYLOAD_TYPE
from edge_shared.mqtt_params import BrokerParams
from edge_shared.protocol import DeviceTopics

if TYPE_CHECKING:
    from edge_shared.mqtt_client import CheckedClient
    from edge_shared.trust.keys import TrustedKey

Signer = Callable[[bytes], bytes]
# Desired documents handed to the broker at once (QoS 1, waiting for PUBACK) by publish_many; the
# MQTT client's own in-flight window is set to the same number.
MAX_IN_FLIGHT = 64


class FleetError(Exception):
    """Shown to the operator as is."""


@dataclass
class DeviceView:
    device: str
    desired: dict[str, Any] | None = None
    desired_error: str | None = None
    desired_raw: bytes | None = None
    reported: dict[str, Any] | None = None
    presence: str = "unknown"
    presence_ts: float | None = None


@dataclass(frozen=True)
class Published:
    device: str
    version: int
    digest: str  # sha256 hex of the exact bytes published
    agent: str | None = None  # the agent release the document names ("good" then waits for it too)


def agent_release(deployment: Mapping[str, Any]) -> str | None:
    """The agent version a deployment document names, if any."""
    agent = deployment.get("agent")
    version = agent.get("version") if isinstance(agent, Mapping) else None
    return version if isinstance(version, str) else None


@dataclass
class _Pending:
    futures: dict[bytes, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


def _json(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({exc})"
    return (doc, None) if isinstance(doc, dict) else (None, "not a JSON object")


def _desired_json(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The desired document; a signed one (DSSE envelope) is shown by its payload. For display
    only: the signature is the device's business (edgectl verify tools check it)."""
    doc, error = _json(payload)
    if doc is not None and doc.get("payloadType") == DOCUMENT_PAYLOAD_TYPE and isinstance(doc.get("payload"), str):
        try:
            inner, error = _json(base64.b64decode(doc["payload"], validate=True))
        except ValueError as exc:
            return None, f"signed envelope with an undecodable payload ({exc})"
        return inner, error
    return doc, error


class FleetClient:
    def __init__(self, params: BrokerParams, prefix: str) -> None:
        self.params = params
        self.prefix = prefix
        self.endpoint = params.all_endpoints[0]  # the broker connected to (set on connect)
        self.response_topic = protocol.fleet_response_topic(prefix, params.client_id)
        self._client: CheckedClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self._messages: dict[str, bytes] = {}
        self._pending = _Pending()
        self._marker_seen: dict[bytes, asyncio.Event] = {}
        self._subscribed: set[str] = set()
        self._received: dict[str, int] = {}  # topic -> messages seen on it (a change counter)
        self._news = asyncio.Event()
        self._watchers: dict[str, set[asyncio.Event]] = {}  # topic -> waiters woken by its next message

    async def __aenter__(self) -> FleetClient:
        import aiomqtt

        from edge_shared.mqtt_client import make_client

        # No bound on the incoming queue: one subscription to a fleet's retained state delivers
        # three messages per device at once, and aiomqtt discards what does not fit (with a bound
        # of 1,000, a fleet of 400 devices lost messages and the end-of-retained marker).
        # Every configured broker in order ([mqtt] host/port, then endpoints): the first that
        # answers. The fleet side makes one short connection per command, so no backoff here.
        problems: list[str] = []
        for endpoint in self.params.all_endpoints:
            client = make_client(self.params.at(endpoint), max_inflight=MAX_IN_FLIGHT, max_queued_incoming=0)
            try:
                await client.__aenter__()
                break
            except aiomqtt.MqttError as exc:
                problems.append(f"{endpoint}: {exc}")
        else:
            raise FleetError(f"cannot connect to broker {'; '.join(problems)}") from None
        self.endpoint = endpoint
        self._client = client
        self._reader = asyncio.create_task(self._read())
        await client.subscribe(self.response_topic, qos=1)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._client:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)

    async def wait_closed(self) -> None:
        """Return when the connection to the broker is gone (a caller racing a long wait on it,
        like `edgectl logs --follow`, then reconnects at once instead of timing out)."""
        if self._reader is not None:
            await asyncio.wait({self._reader})

    @property
    def client(self) -> CheckedClient:
        if self._client is None:
            raise FleetError("not connected")
        return self._client

    async def _read(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)
            payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            if topic == self.response_topic:
                correlation = getattr(message.properties, "CorrelationData", None)
                if correlation in self._marker_seen:
                    self._marker_seen[correlation].set()
                    continue
                future = self._pending.futures.get(correlation or b"")
                if future is not None and not future.done():
                    doc, err = _json(payload)
                    future.set_result(doc if doc is not None else {"ok": False, "error": f"bad answer: {err}"})
                continue
            self._take(topic, payload)

    def _take(self, topic: str, payload: bytes) -> None:
        """A message on a watched topic: into the cache, and wake whoever waits for that topic."""
        if payload:
            self._messages[topic] = payload
        else:
            self._messages.pop(topic, None)
        self._received[topic] = self._received.get(topic, 0) + 1
        self._news.set()
        for waiter in self._watchers.get(topic, ()):
            waiter.set()

    async def retained(self, filters: list[str], timeout: float = 10.0) -> dict[str, bytes]:
        """Subscribe to `filters` and return every retained message that matches them now."""
        from paho.mqtt.subscribeoptions import SubscribeOptions

        from edge_shared.mqtt_client import publish_properties

        new = [f for f in filters if f not in self._subscribed]
        if new:
            await self.client.subscribe([(f, SubscribeOptions(qos=0)) for f in new], timeout=timeout)
            self._subscribed.update(new)
        marker = secrets.token_bytes(8)
        seen = self._marker_seen[marker] = asyncio.Event()
        try:
            await self.client.publish(
                self.response_topic, b"", qos=1, properties=publish_properties(correlation=marker), timeout=timeout
            )
            async with asyncio.timeout(timeout):
                await seen.wait()
        except TimeoutError:
            raise FleetError(f"broker did not answer within {timeout:.0f} s") from None
        finally:
            del self._marker_seen[marker]
        import aiomqtt

        return {t: p for t, p in self._messages.items() if any(aiomqtt.Topic(t).matches(f) for f in filters)}

    async def view(self, device: str) -> DeviceView:
        topics = DeviceTopics(self.prefix, device)
        found = await self.retained([topics.desired, topics.reported, topics.presence])
        return _view_of(self.prefix, device, found)

    async def watch(
        self, devices: list[str] | None = None, timeout: float = 30.0,
        leaves: tuple[str, ...] = ("desired", "reported", "presence"),
    ) -> None:
        """Subscribe to the `leaves` (desired, reported, presence) of `devices` (every device when
        None: one wildcard subscription per leaf); when this returns, everything retained is in the
        cache (`cached_view`), and later messages keep it current."""
        if devices is None:
            filters = [protocol.all_devices_filter(self.prefix, leaf) for leaf in leaves]
        else:  # (what a fleet-wide subscription already covers is not subscribed twice)
            filters = [f"{DeviceTopics(self.prefix, d).base}/{leaf}" for d in devices for leaf in leaves
                       if protocol.all_devices_filter(self.prefix, leaf) not in self._subscribed]
        await self.retained(filters, timeout=timeout)

    def cached_view(self, device: str) -> DeviceView:
        """The device as the cache has it now (after `watch`); no network."""
        return _view_of(self.prefix, device, self._messages)

    def cached_devices(self) -> list[str]:
        """Devices with a retained reported or presence message in the cache."""
        found = {protocol.device_of(self.prefix, t) for t in self._messages
                 if t.endswith("/reported") or t.endswith("/presence")}
        return sorted(d for d in found if d)

    def reported_changes(self, device: str) -> int:
        """How many reported documents of `device` arrived so far (changes when it reports)."""
        return self._received.get(DeviceTopics(self.prefix, device).reported, 0)

    async def news(self, timeout: float) -> None:
        """Return when any message arrived since the last call, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._news.wait()
        self._news.clear()

    def outcome(self, published: Published, target: str) -> tuple[str, str]:
        """What the device's cached report says of a published document: ("reached" | "failed" |
        "pending", the device's words), read by edge_agent.desired.status.wait_outcome."""
        from edge_shared.outcome import wait_outcome

        doc, _ = _json(self._messages.get(DeviceTopics(self.prefix, published.device).reported, b"null"))
        doc = doc or {}
        return wait_outcome(doc.get("deployment"), published.version, published.digest, target,
                            agent=published.agent, agent_update=doc.get("agentUpdate"))

    async def devices(self) -> list[DeviceView]:
        found = await self.retained(
            [protocol.all_devices_filter(self.prefix, "presence"), protocol.all_devices_filter(self.prefix, "reported"),
             protocol.all_devices_filter(self.prefix, "desired")]
        )
        views: dict[str, DeviceView] = {}
        desired: dict[str, bytes] = {}
        for topic, payload in found.items():
            device = protocol.device_of(self.prefix, topic)
            if device is None:
                continue
            if topic.endswith("/desired"):
                desired[device] = payload  # (a device is listed by its presence or report, not by this)
                continue
            view = views.setdefault(device, DeviceView(device))
            if topic.endswith("/presence"):
                view.presence, view.presence_ts = protocol.parse_presence(payload)
            else:
                view.reported, _ = _json(payload)
        for device, payload in desired.items():
            if device in views:
                views[device].desired_raw = payload
        return [views[d] for d in sorted(views)]

    async def next_version(self, device: str, verify_key: TrustedKey | None = None) -> int:
        """One above the highest version the device reports it authenticated, or above the retained
        document on the broker when the device would authenticate it too (an offline device has
        not seen it yet): signed by `verify_key` for a signed deploy; for an unsigned deploy, a
        plain document, unless the device reports it enforces signatures. A claimed version the
        device would refuse never counts: a stranger cannot push the fleet's versions out of range."""
        return next_version(await self.view(device), verify_key)

    async def deploy(
        self,
        device: str,
        deployment: Mapping[str, Any],
        properties: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        sign: Signer | None = None,
        verify_key: TrustedKey | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Published:
        """Publish the next desired document (retained, QoS 1) after PUBACK; returns its version and
        the sha256 of the bytes published (how the device's report names it). A document larger
        than the device says it accepts is not published."""
        published, payload = self.prepare(
            await self.view(device), deployment, properties, version=version, sign=sign, verify_key=verify_key,
            meta=meta,
        )
        await self._publish(DeviceTopics(self.prefix, device).desired, payload, retain=True)
        return published

    def prepare(
        self,
        view: DeviceView,
        deployment: Mapping[str, Any],
        properties: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        sign: Signer | None = None,
        verify_key: TrustedKey | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[Published, bytes]:
        """The next desired document for the device `view` shows (not published): its version is
        one above what the device authenticated (`next_version`). FleetError when it is larger
        than the device says it accepts."""
        if version is None:
            version = next_version(view, verify_key)
        doc: dict[str, Any] = {"version": version, "deployment": dict(deployment)}
        if properties:
            doc["properties"] = dict(properties)
        doc["meta"] = {"deployedAt": round(time.time(), 3), "by": self.params.client_id, **(meta or {})}
        payload = protocol.encode(doc)
        if sign is not None:
            payload = sign(payload)
        limit = ((view.reported or {}).get("deployment") or {}).get("maxDocumentBytes")
        if isinstance(limit, int) and len(payload) > limit:
            raise FleetError(
                f"{view.device}: the document is {len(payload)} bytes; the device accepts at most {limit} "
                "(its twin.max_desired_bytes); not published"
            )
        return Published(view.device, version, hashlib.sha256(payload).hexdigest(), agent_release(deployment)), payload

    async def publish_many(
        self, items: Sequence[tuple[str, bytes]], limit: int = MAX_IN_FLIGHT
    ) -> dict[str, FleetError | None]:
        """Publish desired documents ((device, payload), retained, QoS 1) concurrently, at most
        `limit` waiting for their PUBACK at once; per device None (the broker took it) or the error.
        `limit` publishers take the next document as soon as theirs is acknowledged (a task per
        document would be 10,000 tasks for a fleet of 10,000)."""
        results: dict[str, FleetError | None] = {}
        queue = iter(items)

        async def publisher() -> None:
            for device, payload in queue:
                try:
                    await self._publish(DeviceTopics(self.prefix, device).desired, payload, retain=True)
                    results[device] = None
                except FleetError as exc:
                    results[device] = exc

        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, min(limit, len(items)))):
                tg.create_task(publisher())
        return results

    async def remove_if_refused(self, published: Published) -> bool:
        """Remove a document the device refused (or whose images it rejected) from the broker, when
        it is still the one retained there: the device never took it, and a retained document it
        refused only misleads whoever reads the broker next. True when it was removed."""
        import hashlib

        from edge_shared.outcome import wait_outcome

        doc, _ = _json(self._messages.get(DeviceTopics(self.prefix, published.device).reported, b"null"))
        outcome, detail = wait_outcome((doc or {}).get("deployment"), published.version, published.digest, "good")
        if outcome != "failed" or not detail.startswith(("refused:", "rejected")):
            return False
        view = await self.view(published.device)
        if not view.desired_raw or hashlib.sha256(view.desired_raw).hexdigest() != published.digest:
            return False
        await self.publish_desired_raw(published.device, b"")
        return True

    async def publish_desired_raw(self, device: str, payload: bytes) -> None:
        await self._publish(DeviceTopics(self.prefix, device).desired, payload, retain=True)

    async def _publish(
        self, topic: str, payload: bytes, *, retain: bool = False, properties: Any = None, timeout: float = 10.0
    ) -> None:
        """QoS 1, and the broker must take it: a refusal (its ACL) is a clear error here rather
        than a wait for an answer that cannot come."""
        from edge_shared.mqtt_client import PublishRefused

        try:
            async with asyncio.timeout(timeout):
                await self.client.publish_checked(topic, payload, 1, retain, properties)
        except PublishRefused as exc:
            raise FleetError(f"{exc}; does the broker's ACL let {self.params.client_id or 'this identity'} "
                             f"write {topic}?") from None
        except TimeoutError:
            raise FleetError(f"broker did not acknowledge the publish to {topic} within {timeout:.0f} s") from None

    async def call(self, device: str, command: str, args: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a command (QoS 1; queued by the broker if the device is offline) and wait for the answer."""
        from edge_shared.mqtt_client import publish_properties

        correlation = secrets.token_bytes(12)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.futures[correlation] = future
        try:
            await self._publish(
                DeviceTopics(self.prefix, device).command(command),
                protocol.command_request(dict(args)),
                properties=publish_properties(response_topic=self.response_topic, correlation=correlation),
            )
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise FleetError(f"{device} did not answer {command} within {timeout:.0f} s") from None
        finally:
            self._pending.futures.pop(correlation, None)

    async def wait_for(self, published: Published, target: str, timeout: float) -> str:
        """Wait until the device reports the published document in the `target` state (admitted,
        accepted, running, good: edge_agent/desired/status.py) and return that state; raise
        FleetError with the device's own reason when it refused, rejected, superseded or rolled it
        back, or when it said nothing within `timeout`."""
        topics = DeviceTopics(self.prefix, published.device)
        if topics.reported not in self._subscribed and protocol.all_devices_filter(
            self.prefix, "reported"
        ) not in self._subscribed:
            await self.retained([topics.reported])
        deadline = time.monotonic() + timeout
        # Woken by the device's next report, not by a timer: a deploy waiting on 10,000 devices
        # must not look at 10,000 cached reports twenty times a second.
        news = asyncio.Event()
        self._watchers.setdefault(topics.reported, set()).add(news)
        try:
            while True:
                news.clear()  # (set again only by a report that arrives after this look)
                outcome, detail = self.outcome(published, target)
                if outcome == "reached":
                    return detail
                if outcome == "failed":
                    raise FleetError(f"{published.device}: version {published.version} {detail}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetError(
                        f"{published.device}: version {published.version} not {target} within {timeout:g} s "
                        f"(last reported: {detail})"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await news.wait()
        finally:
            waiters = self._watchers.get(topics.reported, set())
            waiters.discard(news)
            if not waiters:
                self._watchers.pop(topics.reported, None)


def _view_of(prefix: str, device: str, messages: Mapping[str, bytes]) -> DeviceView:
    topics = DeviceTopics(prefix, device)
    view = DeviceView(device)
    if topics.desired in messages:
        view.desired_raw = messages[topics.desired]
        view.desired, view.desired_error = _desired_json(messages[topics.desired])
    if topics.reported in messages:
        view.reported, _ = _json(messages[topics.reported])
    if topics.presence in messages:
        view.presence, view.presence_ts = protocol.parse_presence(messages[topics.presence])
    return view


def next_version(view: DeviceView, verify_key: TrustedKey | None = None) -> int:
    """One above the highest version the device reports it authenticated, or above the retained
    document when the device would authenticate it too (FleetClient.next_version)."""
    section = (view.reported or {}).get("deployment")
    known = [0, *authenticated_versions(section)]
    if view.desired_raw:
        enforced = isinstance(section, Mapping) and section.get("documentMode") == "enforce"
        version = (
            _signed_version(view.desired_raw, verify_key) if verify_key is not None
            else None if enforced else _plain_version(view.desired_raw)
        )
        if version is not None:
            known.append(version)
    return max(known) + 1


def authenticated_versions(section: Any) -> list[int]:
    """Versions the device reports as authenticated: its current and last-known-good versions,
    every version row, and a refused document's version (present only when its signature held)."""
    if not isinstance(section, Mapping):
        return []
    found = [section.get(k) for k in ("current", "lastKnownGood", "highestVersion")]
    versions = section.get("versions")
    if isinstance(versions, Mapping):
        found += [int(k) for k in versions if str(k).isdigit()]
    refused = section.get("lastRefused")
    if isinstance(refused, Mapping):
        found.append(refused.get("version"))
    return [v for v in found if isinstance(v, int) and not isinstance(v, bool)]


def _signed_version(payload: bytes, verify_key: TrustedKey) -> int | None:
    """The version of a retained desired document whose signature `verify_key` verifies."""
    from edge_shared.document import DesiredRejected, Limits, load_json, open_envelope

    limits = Limits(max_bytes=max(len(payload), 1))
    try:
        data, _ = open_envelope(load_json(payload, limits), limits, (verify_key,))
    except DesiredRejected:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _plain_version(payload: bytes) -> int | None:
    """The version of a retained unsigned desired document (for devices with document_mode off)."""
    doc, _ = _json(payload)
    if doc is None or doc.get("payloadType") == DOCUMENT_PAYLOAD_TYPE:
        return None
    version = doc.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None
