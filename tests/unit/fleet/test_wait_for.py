"""FleetClient.wait_for is woken by the device's reports (no polling timer): it answers on the
report that reaches the target, fails on one that refuses, and says what the device last
reported when none came in time."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge_shared import protocol
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient, FleetError, Published

PREFIX = "wt"
DIGEST = "ab" * 32


def client() -> FleetClient:
    fleet = FleetClient(broker_params(MqttSection(host="127.0.0.1", topic_prefix=PREFIX), "ctl"), PREFIX)
    fleet._subscribed.add(protocol.all_devices_filter(PREFIX, "reported"))  # as after watch(None)
    return fleet


def report(state: str, *, version: int = 3, digest: str = DIGEST) -> bytes:
    return json.dumps({"deployment": {"current": version, "versions": {
        str(version): {"digest": digest, "state": state}}}}).encode()


async def test_the_report_that_reaches_the_target_answers_at_once() -> None:
    fleet = client()
    topic = protocol.DeviceTopics(PREFIX, "d1").reported
    waiting = asyncio.create_task(fleet.wait_for(Published("d1", 3, DIGEST), "accepted", 3600))
    await asyncio.sleep(0)
    fleet._take(topic, report("verifying"))
    await asyncio.sleep(0)
    assert not waiting.done()
    fleet._take(protocol.DeviceTopics(PREFIX, "d2").reported, report("activating"))  # another device
    await asyncio.sleep(0)
    assert not waiting.done()
    fleet._take(topic, report("activating"))
    for _ in range(3):  # a few turns of the loop, no time passing: woken by the report, not a timer
        await asyncio.sleep(0)
    assert waiting.done() and waiting.result() == "activating"
    assert fleet._watchers == {}


async def test_a_report_already_cached_answers_without_waiting() -> None:
    fleet = client()
    fleet._take(protocol.DeviceTopics(PREFIX, "d1").reported, report("good"))
    assert await fleet.wait_for(Published("d1", 3, DIGEST), "good", 3600) == "good"


async def test_a_rejection_fails_with_the_devices_words() -> None:
    fleet = client()
    waiting = asyncio.create_task(fleet.wait_for(Published("d1", 3, DIGEST), "accepted", 3600))
    await asyncio.sleep(0)
    fleet._take(protocol.DeviceTopics(PREFIX, "d1").reported, report("rejected"))
    with pytest.raises(FleetError, match="d1: version 3 rejected"):
        await asyncio.wait_for(waiting, 5)
    assert fleet._watchers == {}


async def test_no_report_in_time_says_what_the_device_last_reported() -> None:
    fleet = client()
    fleet._take(protocol.DeviceTopics(PREFIX, "d1").reported, report("verifying"))
    with pytest.raises(FleetError, match=r"not accepted within 0.05 s \(last reported: verifying\)"):
        await fleet.wait_for(Published("d1", 3, DIGEST), "accepted", 0.05)
    assert fleet._watchers == {}


async def test_two_waits_on_one_device_are_both_woken() -> None:
    fleet = client()
    first = asyncio.create_task(fleet.wait_for(Published("d1", 3, DIGEST), "accepted", 3600))
    second = asyncio.create_task(fleet.wait_for(Published("d1", 3, DIGEST), "good", 3600))
    await asyncio.sleep(0)
    fleet._take(protocol.DeviceTopics(PREFIX, "d1").reported, report("good"))
    assert list(await asyncio.wait_for(asyncio.gather(first, second), 5)) == ["good", "good"]
