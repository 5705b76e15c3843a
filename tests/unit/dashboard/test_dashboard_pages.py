"""Every dashboard page renders whole and as the fragment its live update fetches (the block
alone: a macro or variable only the whole page defines would break the live update), from a
feed filled by hand (no broker), a real rollout state file, and real telemetry records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgectl import rollout_policy as rp
from edgectl.client import DeviceView
from edgectl.dashboard.app import create_app
from edgectl.dashboard.feed import FleetFeed
from edgectl.rollout_store import RolloutMeta, RolloutStore


class CachedFleet:
    """What FleetFeed reads of a FleetClient: the cached views."""

    def __init__(self, views: list[DeviceView]) -> None:
        self.views = {v.device: v for v in views}

    def cached_devices(self) -> list[str]:
        return sorted(self.views)

    def cached_view(self, device: str) -> DeviceView:
        return self.views.get(device, DeviceView(device))


def _never() -> Any:
    raise AssertionError("no broker in this test")


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    now = time.time()
    reported = {"ts": now, "agent": {"version": "0.1.0"}, "device": {"labels": {"ring": "canary"}},
                "deployment": {"current": 2, "versions": {"2": {"state": "good"}}},
                "modules": {"pilot": {"image": "r/p:1", "runtimeStatus": "running"}}}
    feed = FleetFeed(_never, rollout_state=tmp_path / "rollouts.db", attestation_dir=tmp_path / "att",
                     telemetry=False)
    feed.fleet = CachedFleet([DeviceView("car-1", reported=reported, presence="online"),  # type: ignore[assignment]
                              DeviceView("car-2", reported={**reported, "device": {"labels": {"ring": "stable"}}},
                                         presence="offline")])
    feed.connected = True
    feed.ready.set()
    for i in range(5):
        feed.telemetry.add({"device": "car-1", "id": f"a{i}", "seq": i, "ts": now - 5 + i, "deployment": 2,
                            "payload": {"fps": 20, "total_ms": [30.0], "sim": {"cte_m": 0.1, "path": [[0, 0], [1, i]]},
                                        "latency_ms": {"capture_to_actuate": {"p50": 40, "p99": 60}}}})
        feed.telemetry.add({"device": "car-2", "id": f"b{i}", "seq": i, "ts": now - 5 + i, "deployment": 1,
                            "payload": {"fps": 10, "total_ms": [50.0]}})
    store = RolloutStore(tmp_path / "rollouts.db")
    rollout = rp.new_rollout("r1", [["car-1"], ["car-2"]], rp.Policy())
    store.create(rollout, RolloutMeta(now, now, "edge", "ring", "1,100%", "v2.json", {"modules": {}}, None,
                                      "/keys/fleet.key", "30d"))
    store.close()
    return TestClient(create_app(feed, run_feed=False), base_url="http://127.0.0.1:8088")


@pytest.mark.parametrize(("path", "needle"), [
    ("/", 'id="fleet-table"'),
    ("/?selector=ring%3Dcanary&sort=state&desc=1&q=car", 'data-device="car-1"'),
    ("/device/car-1", 'id="pilot-charts"'),
    ("/rollouts", 'href="/rollouts/r1"'),
    ("/rollouts/r1", 'id="batch-2"'),
    ("/compare?group=A%3Dring%3Dcanary&group=B%3Dring%3Dstable", 'id="compare-table"'),
])
def test_page_and_its_live_fragment(client: TestClient, path: str, needle: str) -> None:
    with client:
        whole = client.get(path)
        assert whole.status_code == 200, whole.text
        assert "<html" in whole.text and needle in whole.text
        fragment = client.get(path + ("&" if "?" in path else "?") + "fragment=1")
        assert fragment.status_code == 200, fragment.text
        assert "<html" not in fragment.text and needle in fragment.text
        assert "/keys/fleet.key" not in whole.text  # the rollout's key path is not shown


def test_unknown_device_and_rollout_are_404(client: TestClient) -> None:
    with client:
        assert client.get("/device/nobody").status_code == 404
        answer = client.get("/rollouts/nope")
        assert answer.status_code == 404 and "no rollout &#39;nope&#39;" in answer.text


def test_bad_selector_and_groups_are_explained(client: TestClient) -> None:
    with client:
        assert "selector:" in client.get("/?selector=a%3D%3Db").text
        assert "give at least two --group" in client.get("/compare?group=A%3Dring%3Dcanary").text
