"""The example ACL (config/mosquitto/edge-agent.acl) with identities from certificate CNs:
a device reaches only its own subtree."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from devinfra.pki import unique
from devinfra.twin_env import TwinEnv
from edge_shared.mqtt_client import PublishRefused, make_client
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetError


async def _next_message(client: aiomqtt.Client, timeout: float = 10) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return message
    raise AssertionError("message stream ended")


async def test_device_cannot_read_or_write_another_devices_twin(twin_env: TwinEnv) -> None:
    a, b = unique("dev-a"), unique("dev-b")
    cert_a = twin_env.pki.client(a)
    params_a = broker_params(twin_env.mqtt_section(cert_a), a)
    topic = lambda dev, leaf: f"{twin_env.prefix}/{dev}/{leaf}"  # noqa: E731

    async with twin_env.fleet_client() as fleet:
        await fleet.deploy(b, {"modules": {"secret-b": {"image": "registry.local/b:1"}}})
        await fleet.deploy(a, {"modules": {"own-a": {"image": "registry.local/a:1"}}})

        async with make_client(params_a) as client_a:
            # mosquitto 2.0 grants the subscription but filters every message by the ACL at
            # delivery. So: subscribe to B's desired state (retained doc exists) and to A's own,
            # then the fleet publishes to B and then to A; A sees only its own documents.
            await client_a.subscribe([(topic(b, "desired"), SubscribeOptions(qos=1))])
            await client_a.subscribe(f"{twin_env.prefix}/+/desired", qos=1)
            await client_a.subscribe([(topic(a, "desired"), SubscribeOptions(qos=1))])
            await fleet.deploy(b, {"modules": {"secret-b": {"image": "registry.local/b:2"}}})
            await fleet.deploy(a, {"modules": {"own-a": {"image": "registry.local/a:2"}}})
            seen = []
            while True:
                message = await _next_message(client_a)
                seen.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
                if b"a:2" in seen[-1][1]:
                    break
            assert seen and all(t == topic(a, "desired") for t, _ in seen), seen
            assert not any(b"secret-b" in p for _, p in seen)

            # Writing B's reported state or B's desired state, or its own desired state: refused,
            # and the broker says so (PUBACK 0x87), which publish_checked turns into an error.
            forgeries = (("reported", b'{"schema":1,"forged":true}'), ("desired", b'{"schema":1,"version":999}'))
            for leaf, forged in forgeries:
                with pytest.raises(PublishRefused, match="Not authorized"):
                    await client_a.publish_checked(topic(b, leaf), forged, 1, True)
            with pytest.raises(PublishRefused, match="Not authorized"):
                await client_a.publish_checked(topic(a, "desired"), b'{"schema":1,"version":999}', 1, True)
            # A's own reported state is writable.
            await client_a.publish(topic(a, "reported"), b'{"schema":1,"mine":true}', qos=1, retain=True)

        view_b = await fleet.view(b)
        assert view_b.reported is None  # the forged report never landed
        assert view_b.desired is not None and view_b.desired["version"] == 2
        view_a = await fleet.view(a)
        assert view_a.desired is not None and view_a.desired["version"] == 2
        assert view_a.reported == {"schema": 1, "mine": True}

    # Through edgectl's client (here with device A's identity) the refusal is a clear error at
    # once, not a wait for a device answer that cannot come.
    async with twin_env.fleet_client(a) as impostor:
        with pytest.raises(FleetError, match=r"refused the publish to .*/desired: Not authorized"):
            await impostor.publish_desired_raw(b, b'{"schema":1,"version":1000}')
