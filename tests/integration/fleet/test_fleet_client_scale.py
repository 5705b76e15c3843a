"""edgectl reads a whole fleet's retained state in one subscription: thousands of retained
messages arrive in one burst, and none may be dropped (the client's incoming queue was bounded
at 1,000, so a fleet of a few hundred devices lost messages and the end-of-retained marker)."""

from __future__ import annotations

import asyncio
import json

from devinfra.mosquitto import Mosquitto
from devinfra.pki import unique
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient

DEVICES = 1500


async def test_watch_sees_every_retained_message_of_a_large_fleet(mosquitto: Mosquitto) -> None:
    prefix = unique("scale")
    section = MqttSection(host="127.0.0.1", port=mosquitto.port, topic_prefix=prefix)
    async with FleetClient(broker_params(section, unique("writer")), prefix) as writer:
        sem = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            reported = {"schema": 1, "deviceId": f"d{i:04d}", "device": {"labels": {"n": str(i)}},
                        "deployment": {"current": i, "versions": {}}, "pad": "x" * 1500}
            async with sem:
                await writer.client.publish_checked(f"{prefix}/d{i:04d}/reported", json.dumps(reported).encode(),
                                                    1, True)
                await writer.client.publish_checked(f"{prefix}/d{i:04d}/presence", b'{"schema":1,"status":"online"}',
                                                    1, True)

        await asyncio.gather(*(put(i) for i in range(DEVICES)))
    async with FleetClient(broker_params(section, unique("reader")), prefix) as reader:
        await reader.watch(None)
        devices = reader.cached_devices()
        assert len(devices) == DEVICES
        assert all((reader.cached_view(d).reported or {})["deployment"]["current"] == int(d[1:]) for d in devices)
        views = await reader.devices()
        assert len(views) == DEVICES and all(v.presence == "online" for v in views)
