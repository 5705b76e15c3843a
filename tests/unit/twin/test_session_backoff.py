"""The session's reconnect loop against a port where nothing listens: retries forever with
jittered exponential backoff under the cap; broken credentials fail loudly but never block the
agent's start. The twin is transport only: desired payloads go, as bytes, to a callback; the MQTT
Maximum Packet Size it asks for matches the desired-document limit."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from pathlib import Path

import pytest

from devinfra.procs import free_port
from edge_agent.config import AgentConfig, parse_config
from edge_agent.reported import ReportedState
from edge_agent.twin.component import PACKET_OVERHEAD_BYTES, TwinComponent, max_packet_bytes
from edge_agent.twin.session import MAX_COMMAND_BYTES, TwinSession
from edge_shared.mqtt_client import make_client
from edge_shared.mqtt_params import BrokerParams
from edge_shared.protocol import DeviceTopics


async def _nothing(raw: bytes) -> None:
    return None


async def test_retries_with_capped_jittered_backoff(caplog: pytest.LogCaptureFixture) -> None:
    params = BrokerParams("127.0.0.1", free_port(), "unit-dev", None, None, None, 5)
    session = TwinSession(params, DeviceTopics("t", "unit-dev"), _nothing, reconnect_max_delay_s=1.0)
    caplog.set_level(logging.DEBUG, logger="edge_agent.twin.session")
    task = asyncio.create_task(session.run())
    async with asyncio.timeout(60):  # attempts every 1 s at most: five of them, on a machine of any speed
        while len(re.findall(r"retry \d+ in ([0-9.]+) s", caplog.text)) < 5:
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    retries = [r for r in caplog.records if getattr(r, "EVENT", None) == "mqtt.retry"]
    delays = [float(m) for m in re.findall(r"retry \d+ in ([0-9.]+) s", caplog.text)]
    assert len(delays) >= 4, caplog.text  # still trying, not given up
    assert all(0 <= d <= 1.0 for d in delays), delays  # capped
    assert len(set(delays)) > 1  # jittered, not a fixed interval
    assert not session.connected
    # The same error again and again: one WARNING, the other attempts at DEBUG.
    assert [r.levelname for r in retries] == ["WARNING"] + ["DEBUG"] * (len(retries) - 1)


async def test_publish_waits_for_a_connection(tmp_path: Path) -> None:
    params = BrokerParams("127.0.0.1", free_port(), "unit-dev", None, None, None, 5)
    session = TwinSession(params, DeviceTopics("t", "unit-dev"), _nothing)
    with pytest.raises(TimeoutError):
        await session.publish("t/unit-dev/telemetry/x", b"{}", timeout=0.3)


async def test_broken_tls_files_do_not_block_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("ca.crt", "dev.crt", "dev.key"):
        (tmp_path / name).write_text("not a certificate\n")
    config = parse_config(
        f'[device]\nid = "unit-dev"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[mqtt]\ntls = true\nca_file = "{tmp_path / "ca.crt"}"\ncert_file = "{tmp_path / "dev.crt"}"\n'
        f'key_file = "{tmp_path / "dev.key"}"\n'
    )
    seen: list[bytes] = []
    twin = TwinComponent(config, ReportedState(), seen.append)  # no I/O yet: the credentials are read in run()
    await twin.start()
    await twin.handle_desired(b"payload")  # the desired-state room still gets what arrives
    assert seen == [b"payload"]
    with pytest.raises(ExceptionGroup) as info:  # the daemon's supervisor logs it and retries
        await twin.run()
    assert info.group_contains(ssl.SSLError)
    assert "cannot load MQTT credentials/TLS files" in caplog.text


def _config(tmp_path: Path, extra: str = "") -> AgentConfig:
    return parse_config(f'[device]\nid = "unit-dev"\n[state]\ndir = "{tmp_path / "state"}"\n{extra}')


async def test_desired_payloads_are_handed_over_as_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[bytes] = []

    def sink(raw: bytes) -> None:
        seen.append(raw)
        if raw == b"boom":
            raise RuntimeError("bug in the room")

    twin = TwinComponent(_config(tmp_path), ReportedState(), sink)
    for raw in (b"", b"\xff\x00", b"boom", b'{"version":1}'):
        await twin.handle_desired(raw)  # a failing room must not take the MQTT session down
    assert seen == [b"", b"\xff\x00", b"boom", b'{"version":1}']
    assert "desired document handling failed unexpectedly" in caplog.text and "bug in the room" in caplog.text


async def test_ping_reports_the_current_deployment(tmp_path: Path) -> None:
    reported = ReportedState()
    twin = TwinComponent(_config(tmp_path), reported, lambda raw: None)
    handler = twin.session.commands.get("ping")
    assert handler is not None
    assert (await handler({"echo": 1}))["current"] is None
    reported.set("deployment", {"current": 4})
    assert await handler({"echo": "x"}) == {"pong": True, "device": "unit-dev", "current": 4, "echo": "x"}


@pytest.mark.parametrize(("limit", "expected"), [
    (1048576, 1048576 + PACKET_OVERHEAD_BYTES),
    (64 * 1048576, 64 * 1048576 + PACKET_OVERHEAD_BYTES),
    (1024, MAX_COMMAND_BYTES + PACKET_OVERHEAD_BYTES),  # commands can be larger than a tiny document limit
])
async def test_maximum_packet_size_follows_the_document_limit(tmp_path: Path, limit: int, expected: int) -> None:
    config = _config(tmp_path, f"[twin]\nmax_desired_bytes = {limit}\n")
    assert max_packet_bytes(config) == expected
    twin = TwinComponent(config, ReportedState(), lambda raw: None)
    assert twin.session.max_packet_bytes == expected
    # ... and it is what the client sends on CONNECT (MQTT 5 Maximum Packet Size)
    client = make_client(BrokerParams("127.0.0.1", 1, "unit-dev", None, None, None, 5),
                         max_packet_bytes=twin.session.max_packet_bytes)
    assert client._properties.MaximumPacketSize == expected
