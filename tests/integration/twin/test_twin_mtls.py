"""The deployment twin end to end: the real agent (subprocess), edgectl (CLI and library) and a
real mosquitto with mutual TLS and the example ACL. Transport tests: their images do not exist, so
documents are waited for as admitted (passed the document gate; image pinning is another test's)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.pki import unique
from devinfra.twin_env import TwinEnv
from tests.integration.twin.helpers import deployment_section, edgectl, stored_state, version_state, wait_reported

MANIFEST = {"modules": {"pilot": {"image": "registry.local/pilot:1.0"}, "camera": {"image": "registry.local/cam:2"}}}


async def test_deploy_receive_report_with_edgectl(twin_env: TwinEnv, tmp_path: Path) -> None:
    device = unique("dev")
    agent = AgentProcess(tmp_path / "agent", twin_env.agent_config(device)).start()
    try:
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps(MANIFEST))
        props = tmp_path / "props.json"
        props.write_text(json.dumps({"pilot": {"maxThrottle": 0.4}}))
        flags = twin_env.edgectl_flags()

        out = await asyncio.to_thread(
            edgectl, "deploy", *flags, device, str(manifest), "--properties", str(props),
            "--wait", "20", "--until", "admitted",
        )
        assert out.returncode == 0, out.stderr
        assert f"{device}: published desired version 1" in out.stdout
        assert f"{device}: version 1 verifying" in out.stdout
        agent.wait_log("desired version 1 admitted (signed by nobody: document_mode off): 2 modules")
        # Nothing of it is stored before its images are verified (they cannot be: no registry).
        assert stored_state(agent)["desired_accepted"] == []

        # A second deploy gets the next version and supersedes the first.
        out = await asyncio.to_thread(
            edgectl, "deploy", *flags, device, str(manifest), "--wait", "20", "--until", "admitted"
        )
        assert out.returncode == 0, out.stderr
        assert "version 2 verifying" in out.stdout
        # Waiting for more than the gate: the device says why it is not there (exit 1).
        out = await asyncio.to_thread(
            edgectl, "deploy", *flags, device, str(manifest), "--wait", "3", "--until", "accepted"
        )
        assert out.returncode == 1 and "version 3 not accepted within 3 s" in out.stderr, out.stderr
        assert "not verified yet, trying again" in out.stderr

        # Reported state: agent figures and per-version status, and no secrets or key material.
        async with twin_env.fleet_client() as fleet:
            reported = await wait_reported(
                fleet, device, lambda d: version_state(d, 2) == "superseded", what="version 2 superseded"
            )
        assert reported["schema"] == 1 and reported["deviceId"] == device
        assert version_state(reported, 1) == "superseded" and version_state(reported, 3) == "verifying"
        assert deployment_section(reported)["current"] is None
        agent_section = reported["agent"]
        assert agent_section["os"] == "linux" and agent_section["uptimeS"] >= 0
        assert agent_section["disk"]["freeBytes"] > 0 and agent_section["memory"]["totalBytes"] > 0
        text = json.dumps(reported)
        assert "PRIVATE KEY" not in text and ".key" not in text

        # edgectl show: desired vs reported; modules the device does not report are marked.
        out = await asyncio.to_thread(edgectl, "show", *flags, device)
        assert out.returncode == 0, out.stderr
        assert f"device {device}: online" in out.stdout
        assert "! desired version 3   device runs None" in out.stdout
        assert "! version 2: superseded" in out.stdout and "! version 3: verifying" in out.stdout
        assert "! pilot" in out.stdout and "(missing)" in out.stdout  # no lifecycle layer reports modules yet

        # edgectl devices: presence, then offline after a clean stop and after a crash (last will).
        out = await asyncio.to_thread(edgectl, "devices", *flags, "--json")
        rows = {r["device"]: r for r in json.loads(out.stdout)}
        assert rows[device]["presence"] == "online" and rows[device]["currentVersion"] is None
        assert agent.stop() == 0
        out = await asyncio.to_thread(edgectl, "devices", *flags, "--json")
        rows = {r["device"]: r for r in json.loads(out.stdout)}
        assert rows[device]["presence"] == "offline" and rows[device]["lastSeen"] is not None

        agent.start()
        async with twin_env.fleet_client() as fleet:
            for _ in range(100):
                if (await fleet.view(device)).presence == "online":
                    break
                await asyncio.sleep(0.1)
            assert (await fleet.view(device)).presence == "online"
            agent.kill()  # no goodbye: the broker publishes the last will
            for _ in range(100):
                if (await fleet.view(device)).presence == "offline":
                    break
                await asyncio.sleep(0.1)
            assert (await fleet.view(device)).presence == "offline"
    finally:
        agent.stop()


async def test_broker_killed_and_restarted_agent_ends_on_latest(own_twin_env: TwinEnv, tmp_path: Path) -> None:
    env = own_twin_env
    device = unique("dev")
    agent = AgentProcess(tmp_path / "agent", env.agent_config(device)).start()
    try:
        async with env.fleet_client() as fleet:
            v1 = await fleet.deploy(device, {"modules": {}})  # nothing to pin: accepted at once
            await fleet.wait_for(v1, "accepted", 20)

        env.broker.kill()  # SIGKILL: no persistence save, retained messages and sessions are lost
        agent.wait_log("EVENT=mqtt.disconnected", timeout=20)
        await asyncio.sleep(1.5)  # the agent retries against a dead port meanwhile
        env.broker.start()  # same port

        async with env.fleet_client() as fleet:
            # The agent re-publishes its reported state on reconnect (the broker lost it).
            await wait_reported(
                fleet, device, lambda d: version_state(d, v1.version) == "activating", what="re-published report"
            )
            # Several updates in a row; the device must end on the last one.
            published = [await fleet.deploy(device, {"modules": {}}) for _ in range(3)]
            assert [p.version for p in published] == [v1.version + 1, v1.version + 2, v1.version + 3]
            assert await fleet.wait_for(published[-1], "accepted", 20) == "activating"
        stored = stored_state(agent)
        assert [(r[1], r[2]) for r in stored["desired_accepted"]] == [(published[-1].version, published[-1].digest)]
        assert agent.log().count("EVENT=mqtt.connected") >= 2
    finally:
        agent.stop()


async def test_command_sent_while_device_offline_is_delivered_after_reconnect(
    twin_env: TwinEnv, tmp_path: Path
) -> None:
    device = unique("dev")
    agent = AgentProcess(tmp_path / "agent", twin_env.agent_config(device)).start()
    try:
        agent.wait_log("EVENT=mqtt.connected")  # the persistent session (and its subscription) exists
        agent.kill()
        async with twin_env.fleet_client() as fleet:
            for _ in range(100):
                if (await fleet.view(device)).presence == "offline":
                    break
                await asyncio.sleep(0.1)
            assert (await fleet.view(device)).presence == "offline"
            call = asyncio.create_task(fleet.call(device, "ping", {"echo": "sent-while-offline"}, timeout=40))
            await asyncio.sleep(1.0)
            assert not call.done()  # nobody there to answer
            await asyncio.to_thread(agent.start)
            answer = await call
        assert answer == {
            "schema": 1,
            "ok": True,
            "result": {"pong": True, "device": device, "current": None, "echo": "sent-while-offline"},
        }
        agent.wait_log("command ping received")

        # An unknown command gets an error answer, not silence.
        async with twin_env.fleet_client() as fleet:
            answer = await fleet.call(device, "no-such-command", {}, timeout=20)
        assert answer["ok"] is False and "unknown command 'no-such-command'" in answer["error"]["description"]
    finally:
        agent.stop()


async def test_edgectl_reads_its_own_config_file(twin_env: TwinEnv, tmp_path: Path) -> None:
    device = unique("dev")
    (tmp_path / "edgectl").mkdir()
    cfg = tmp_path / "edgectl" / "config.toml"
    cfg.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {twin_env.broker.port}\ntopic_prefix = "{twin_env.prefix}"\n'
        f'tls = true\nca_file = "{twin_env.pki.ca}"\ncert_file = "{twin_env.fleet.cert}"\n'
        f'key_file = "{twin_env.fleet.key}"\nclient_id = "ops"\n'
    )
    manifest = tmp_path / "deployment.toml"
    manifest.write_text('[modules.pilot]\nimage = "registry.local/pilot:9"\n')
    other = unique("dev2")
    async with twin_env.fleet_client() as fleet:
        await fleet.deploy(other, {"modules": {}}, version=41)
    out = await asyncio.to_thread(edgectl, "deploy", "--config", str(cfg), device, other, str(manifest))
    assert out.returncode == 0, out.stderr
    # Each device gets its own next version (`other` never ran: its retained document counts).
    assert f"{device}: published desired version 1" in out.stdout
    assert f"{other}: published desired version 42" in out.stdout
    out = await asyncio.to_thread(edgectl, "show", "--config", str(cfg), device, "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["desired"]["deployment"] == {"modules": {"pilot": {"image": "registry.local/pilot:9"}}}
    assert shown["desired"]["meta"]["by"].startswith("ops-")
    # A broker that is not there: a clear error, exit 1.
    out = await asyncio.to_thread(edgectl, "devices", "--config", str(cfg), "--port", "1")
    assert out.returncode == 1 and "cannot connect to broker 127.0.0.1:1" in out.stderr
