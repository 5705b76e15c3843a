"""The other way in: user name + password (from a secret file) instead of client certificates.
The secret never shows up in the reported state or the logs."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.pki import acl_text, unique
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient
from tests.integration.twin.helpers import version_state, wait_reported


async def test_username_password_and_no_secret_leaks(tmp_path: Path) -> None:
    prefix, device, ops = unique("pw"), unique("dev"), unique("ops")
    device_pw, ops_pw = secrets.token_hex(12), secrets.token_hex(12)
    broker_dir = tmp_path / "mosquitto"
    broker_dir.mkdir()
    passwd = broker_dir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), device, device_pw], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), ops, ops_pw], check=True)
    acl = broker_dir / "acl"
    acl.write_text(acl_text(prefix, ops))
    broker = Mosquitto(
        broker_dir, extra_conf=f"password_file {passwd}\nacl_file {acl}\n", anonymous=False
    ).start()
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(device_pw + "\n")
    secret_file.chmod(0o600)

    def agent_config(secret: Path) -> str:
        return (
            f'[device]\nid = "{device}"\n[logging]\nformat = "text"\nlevel = "debug"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{prefix}"\n'
            f'username = "{device}"\npassword = "file:{secret}"\nreconnect_max_delay_s = 1\n'
            f"[twin]\nreport_min_interval_s = 0.2\n"
            f'[trust]\ndocument_mode = "off"\n'
        )

    agent = AgentProcess(tmp_path / "agent", agent_config(secret_file))
    try:
        agent.start()
        ops_file = tmp_path / "ops-password"
        ops_file.write_text(ops_pw)
        section = MqttSection(
            host="127.0.0.1", port=broker.port, topic_prefix=prefix, username=ops, password=f"file:{ops_file}"
        )
        async with FleetClient(broker_params(section, f"{ops}-1"), prefix) as fleet:
            published = await fleet.deploy(device, {"modules": {}})
            await fleet.wait_for(published, "accepted", 20)
            reported = await wait_reported(fleet, device, lambda d: version_state(d, 1) == "activating")
        assert device_pw not in str(reported)
        agent.stop()

        # A wrong password: the agent keeps retrying, says why, and never prints the secret.
        wrong = tmp_path / "wrong-password"
        wrong.write_text("wrong-" + device_pw)
        agent.config_path.write_text(agent_config(wrong))
        agent.start()
        await asyncio.to_thread(agent.wait_log, "EVENT=mqtt.retry", 20)
        assert "EVENT=deployment.loaded" in agent.log()  # the stored deployment runs regardless
        log = agent.log()
        assert device_pw not in log and ops_pw not in log
    finally:
        agent.stop()
        broker.stop()
