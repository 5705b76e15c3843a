"""The pilot's telemetry client against a real agent: records held `flush_s`, then sent pipelined,
are stored by one group commit (one fsync) and acknowledged, each once, and go up to the broker."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from edge_pilot.telemetry import TelemetryClient

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import wait_until
from devinfra.telemetry import BROKER_CONF, agent_config

GROUP = 20


def wal_commits(wal: Path) -> int:
    """Commit frames in a WAL file (a frame whose header holds the database size after the commit).
    Read from the file itself: the agent holds the database exclusively."""
    data = wal.read_bytes() if wal.exists() else b""
    if len(data) < 32:
        return 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salt = data[16:24]
    commits, offset = 0, 32
    while offset + 24 + page_size <= len(data):
        if data[offset + 8 : offset + 16] != salt:  # frames of an earlier WAL generation
            break
        commits += struct.unpack(">I", data[offset + 4 : offset + 8])[0] != 0
        offset += 24 + page_size
    return commits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_held_records_are_one_group_commit_in_a_real_agent(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=BROKER_CONF).start()
    agent = AgentProcess(tmp_path / "agent", agent_config(broker.port, tmp_path / "run", ["pilot"])).start()
    clock = Clock()
    client = TelemetryClient(str(tmp_path / "run/ingest/pilot/telemetry.sock"), flush_s=10.0, clock=clock,
                             timeout=20.0)
    try:
        def figures() -> dict[str, Any]:
            answer: Any = agent.call("telemetry")
            return dict(answer)

        wait_until(lambda: figures()["connected"], 60, "the agent's uplink to connect")
        wal = agent.state_dir / "telemetry.db-wal"
        before = wal_commits(wal)
        for i in range(GROUP):
            assert client.publish({"fps": 20.0, "i": i, "pad": "p" * 600})
        wait_until(lambda: client.q.empty(), 10, "the client to take the records")
        assert client.counters.sent == 0, "held, not sent before flush_s"
        clock.now += 10.0
        wait_until(lambda: client.counters.sent == GROUP, 60, f"{GROUP} acknowledgements")
        # One commit for the group (a second may be the agent's own, e.g. its health record).
        commits = wal_commits(wal) - before
        assert 1 <= commits <= 2, f"{commits} commits for {GROUP} records sent together"
        wait_until(lambda: figures()["sentRecords"] >= GROUP, 60, "the records to reach the broker")
        assert figures()["refused"] == {} and client.counters.dropped == 0
    finally:
        client.close()
        agent.stop()
        broker.stop()
