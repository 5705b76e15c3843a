"""Store-and-forward against a real mosquitto: outage, broker restart during upload, priorities."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import wait_until
from devinfra.telemetry import (
    BROKER_CONF,
    Follower,
    IngestClient,
    agent_config,
    assert_in_order,
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto", extra_conf=BROKER_CONF).start()
    yield b
    b.stop()


@pytest.fixture
def follower(tmp_path: Path, broker: Mosquitto) -> Iterator[Follower]:
    f = Follower(tmp_path / "fleet", broker.port).start()
    yield f
    f.stop()


def start_agent(tmp_path: Path, broker: Mosquitto, telemetry: str = "") -> AgentProcess:
    return AgentProcess(
        tmp_path / "agent",
        agent_config(broker.port, tmp_path / "run", ["sensor", "camera"], telemetry=telemetry),
    ).start()


def test_outage_then_broker_returns_everything_acked_arrives_in_order(
    tmp_path: Path, broker: Mosquitto, follower: Follower
) -> None:
    agent = start_agent(tmp_path, broker, 'batch_max_records = 100\n[telemetry.streams."alerts"]\npriority = 0\n')
    try:
        with IngestClient(tmp_path / "run/ingest/sensor/telemetry.sock") as warm:
            first = warm.send("bulk", {"before": True})
        follower.wait_for_ids({first["id"]}, 15)
        wait_until(lambda: agent.call("telemetry")["depth"] == 0, 10, "the PUBACK")  # type: ignore[index]
        broker.stop()
        # The outage: three streams keep sending for ~6 s, every record acknowledged while offline.
        acked: set[str] = set()
        deadline = time.monotonic() + 6
        n = 0
        with IngestClient(tmp_path / "run/ingest/sensor/telemetry.sock") as sensor, IngestClient(
            tmp_path / "run/ingest/camera/telemetry.sock"
        ) as camera:
            while time.monotonic() < deadline:
                answers = sensor.send_many(
                    [{"stream": "bulk", "priority": 9, "payload": {"n": n + i, "pad": "x" * 100}} for i in range(200)]
                )
                answers += sensor.send_many([{"stream": "alerts", "payload": {"n": n, "level": "high"}}])
                answers += camera.send_many([{"stream": "frames", "priority": 7, "payload": {"n": n + i}}
                                             for i in range(50)])
                n += 200
                assert all(a["ok"] for a in answers), [a for a in answers if not a["ok"]][:3]
                acked |= {a["id"] for a in answers}
                time.sleep(0.2)
        status = agent.call("telemetry")
        assert isinstance(status, dict)
        assert status["depth"] == len(acked) and status["connected"] is False
        assert status["oldestAgeS"] >= 5
        broker.start()
        follower.wait_for_ids(acked, 60)
        records = follower.records()
        assert_in_order(records)
        firsts = [r for r in records if not r.get("duplicate") and r["id"] in acked]
        # Alerts (priority 0 by config) go before the bulk that waited with them.
        last_alert = max(i for i, r in enumerate(firsts) if r["stream"] == "alerts")
        first_bulk = min(i for i, r in enumerate(firsts) if r["stream"] == "bulk")
        assert last_alert < first_bulk
        assert {r["module"] for r in firsts if r["stream"] == "frames"} == {"camera"}
        assert {r["module"] for r in firsts if r["stream"] != "frames"} == {"sensor"}
        wait_until(lambda: agent.call("telemetry")["depth"] == 0, 20, "the queue to drain")  # type: ignore[index]
        after = agent.call("telemetry")
        assert isinstance(after, dict)
        assert after["connected"] is True and after["sentRecords"] >= len(acked) and after["uploadRate"] > 0
        assert after["oldestAgeS"] is None and after["drops"] == {}
    finally:
        agent.stop()


def test_broker_restarted_during_upload_loses_nothing(tmp_path: Path, broker: Mosquitto, follower: Follower) -> None:
    agent = start_agent(tmp_path, broker, "batch_max_records = 20\ninflight_batches = 2\ncompression = \"none\"\n")
    try:
        broker.stop()
        with IngestClient(tmp_path / "run/ingest/sensor/telemetry.sock") as sensor:
            answers = sensor.send_many(
                [{"stream": f"s{i % 3}", "payload": {"i": i, "pad": "y" * 200}} for i in range(30_000)]
            )
        assert all(a["ok"] for a in answers)
        acked = {a["id"] for a in answers}
        broker.start()
        wait_until(lambda: len(follower.distinct_ids()) > 2000, 30, "upload to be under way")
        assert len(follower.distinct_ids()) < len(acked), "upload finished before the restart; make it bigger"
        broker.stop()
        time.sleep(1)
        broker.start()
        follower.wait_for_ids(acked, 90)
        records = follower.records()
        assert_in_order(records)
        dups = [r for r in records if r.get("duplicate")]
        # At-least-once: a restart may deliver some records twice; each duplicate carries the id of
        # a record already delivered, so the fleet side drops it (edgectl telemetry does).
        # How many depends on what the broker had in flight to the follower's persistent session
        # when it stopped (seen: 0 to ~2000 of 30,000 under load), so it is reported, not bounded.
        delivered = {r["id"] for r in records if not r.get("duplicate")}
        assert all(r["id"] in delivered for r in dups)
        print(f"duplicates after the broker restart: {len(dups)} of {len(records)} records")
    finally:
        agent.stop()
