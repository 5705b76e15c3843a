"""A broker that refuses the device's telemetry (its ACL does not allow the topic): the records
stay queued, the refusal is reported, and they go up by themselves once the ACL is fixed.

mosquitto 2 answers such a publish with PUBACK reason 0x87 (Not authorized). Before the agent
read reason codes, the uplink took that PUBACK for delivery and deleted the records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import wait_until
from devinfra.telemetry import Follower, IngestClient, agent_config

DENY_TELEMETRY = "topic readwrite edge/#\ntopic deny edge/dev1/telemetry/#\n"
ALLOW_ALL = "topic readwrite edge/#\n"


def telemetry(agent: AgentProcess) -> dict[str, Any]:
    answer = agent.call("telemetry")
    assert isinstance(answer, dict)
    return answer


def test_refused_telemetry_stays_queued_is_reported_and_goes_up_once_allowed(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(DENY_TELEMETRY)
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=f"acl_file {acl}\n").start()
    agent = AgentProcess(tmp_path / "agent", agent_config(broker.port, tmp_path / "run", ["sensor"])).start()
    follower: Follower | None = None
    try:
        with IngestClient(tmp_path / "run/ingest/sensor/telemetry.sock") as sensor:
            answers = sensor.send_many([{"stream": "s", "payload": {"i": i}} for i in range(50)])
        assert all(a["ok"] for a in answers)
        acked = {a["id"] for a in answers}

        wait_until(lambda: telemetry(agent)["refusedBatches"] >= 2, 30, "the broker to refuse twice (one retry)")
        status = telemetry(agent)
        # The agent's own health records are refused the same way (edge/dev1/telemetry/health).
        assert "Not authorized" in status["lastError"] and "edge/dev1/telemetry/" in status["lastError"]
        assert status["streams"]["s"]["depth"] == 50 and status["sentRecords"] == 0  # nothing deleted
        # The same figures reach the reported state (the twin's reported topic is allowed).
        reported = agent.call("status")["reported"]["telemetry"]  # type: ignore[index]
        assert reported["refusedBatches"] >= 1
        # One error line per cause, not one per retry.
        assert agent.log().count("EVENT=telemetry.refused") == 1

        acl.write_text(ALLOW_ALL)
        broker.reload()
        follower = Follower(tmp_path / "fleet", broker.port).start()
        follower.wait_for_ids(acked, 60)
        wait_until(lambda: telemetry(agent)["depth"] == 0, 10, "the queue to drain")
        assert telemetry(agent)["lastError"] is None
        assert "EVENT=telemetry.accepted_again" in agent.log()
    finally:
        if follower is not None:
            follower.stop()
        agent.stop()
        broker.stop()


def test_a_refused_reported_state_is_logged_not_resent_and_the_agent_keeps_running(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge/#\ntopic deny edge/dev1/reported\n")
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=f"acl_file {acl}\n").start()
    agent = AgentProcess(tmp_path / "agent", agent_config(broker.port, tmp_path / "run", ["sensor"])).start()
    try:
        agent.wait_log("EVENT=mqtt.publish_refused", timeout=20)
        assert "the broker refused the publish to edge/dev1/reported: Not authorized" in agent.log()
        # Telemetry (allowed) still goes up through the same session.
        with IngestClient(tmp_path / "run/ingest/sensor/telemetry.sock") as sensor:
            assert sensor.send("s", {"i": 1})["ok"]
        # (the agent's own health record goes up too: count the module's stream only)
        wait_until(lambda: telemetry(agent)["sentRecords"] >= 1 and "s" not in telemetry(agent)["streams"], 20,
                   "the record to be acknowledged")
    finally:
        agent.stop()
        broker.stop()


def test_a_command_answer_to_a_topic_the_device_may_not_write_is_logged(tmp_path: Path) -> None:
    import subprocess

    acl = tmp_path / "acl"
    acl.write_text(ALLOW_ALL)  # edge/# only: "elsewhere/replies" is not writable
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=f"acl_file {acl}\n").start()
    agent = AgentProcess(tmp_path / "agent", agent_config(broker.port, tmp_path / "run", ["sensor"])).start()
    try:
        wait_until(lambda: telemetry(agent)["connected"], 20, "the agent to connect")
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t", "edge/dev1/commands/ping",
             "-m", '{"args":{}}', "-D", "publish", "response-topic", "elsewhere/replies",
             "-D", "publish", "correlation-data", "c1"],
            check=True, timeout=10,
        )
        agent.wait_log("EVENT=command.reply_refused", timeout=20)
        assert "the broker refused the publish to elsewhere/replies: Not authorized" in agent.log()
    finally:
        agent.stop()
        broker.stop()
