"""Health figures of this machine from a real agent: in `edge-agent status` (the module's CPU and
memory from the real podman; the temperature exactly when /sys/class/thermal has a reading, else
ABSENT with the reason), in the reported state on the broker, as telemetry (stream "health"),
and `edge-agent check`'s power, temperature and disk lines."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import aiomqtt

from devinfra.procs import wait_until
from edge_agent.diagnostics.health import read_temperature
from edge_shared.mqtt_client import make_client
from edge_shared.mqtt_params import broker_params

from .conftest import REPO, Device


def cli(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args, "--config", str(device.agent.config_path),
         "--state-dir", str(device.agent.state_dir)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_health_in_status_reported_state_telemetry_and_check(device: Device) -> None:
    def module_figures() -> bool:
        health = device.status()["reported"].get("health") or {}
        return "cpuPercent" in (health.get("modules") or {}).get("ticker", {})

    wait_until(module_figures, 60, "a second health sample with the module's CPU")
    status = cli(device, "status")
    assert status.returncode == 0, status.stderr
    print(status.stdout)
    health_lines = [line for line in status.stdout.splitlines() if line.startswith("health") or
                    (line.startswith(" " * 12) and ("ABSENT" in line or "ticker:" in line))]
    text = "\n".join(health_lines)
    temperature, why = read_temperature(Path("/"))
    if temperature is None:
        assert f"cpuTemperature ABSENT: {why}" in text
    else:
        assert f"°C ({temperature['zone']})" in text and "cpuTemperature ABSENT" not in text
    assert "memory" in text and "available of" in text and "% used" in text
    assert "ticker: CPU " in text and "memory " in text

    reported = device.status()["reported"]["health"]
    assert reported["memory"]["totalBytes"] > 0 and reported["disk"]["freeBytes"] > 0
    assert ("cpuTemperature" in reported) == (temperature is not None)

    async def health_record() -> dict[str, object]:
        fleet = device.env.fleet
        params = broker_params(device.env.mqtt_section(fleet), f"{fleet.cn}-health")
        topic = f"{device.env.prefix}/{device.device_id}/telemetry/health"
        async with make_client(params) as client:
            await client.subscribe(topic, qos=1)
            # A record is queued at start, then every 5 minutes: restart the agent to see one now.
            def restart() -> None:
                assert device.agent.stop() == 0
                device.agent.start()

            await asyncio.to_thread(restart)
            async with asyncio.timeout(60):
                async for message in client.messages:
                    payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
                    content = getattr(message.properties, "ContentType", None)
                    doc = json.loads(zlib.decompress(payload) if content == "application/json+zlib" else payload)
                    assert doc["stream"] == "health"
                    record = doc["records"][0]
                    assert record["module"] == "edge-agent"
                    return record["payload"]  # type: ignore[no-any-return]
        raise AssertionError("no health telemetry")

    try:
        record = asyncio.run(health_record())
    except aiomqtt.MqttError as exc:
        raise AssertionError(f"broker: {exc}") from None
    assert record["memory"]["totalBytes"] == reported["memory"]["totalBytes"]  # type: ignore[index]

    check = cli(device, "check")
    lines = {line.split()[1] + " " + line.split()[2]: line for line in check.stdout.splitlines()
             if line[:4] in ("PASS", "WARN", "FAIL") and len(line.split()) > 2}
    assert "power and" in lines and "CPU temperature" in lines and "disk use" in lines, check.stdout
