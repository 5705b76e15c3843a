"""The session's reconnect loop against a port where nothing listens: retries forever with
jittered exponential backoff under the cap; broken credentials fail loudly but never block
the offline hand-over."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.mqtt_params import BrokerParams
from edge_agent.reported import ReportedState
from edge_agent.store import open_state_db
from edge_agent.twin.component import TwinComponent
from edge_agent.twin.events import DesiredState
from edge_agent.twin.protocol import DeviceTopics
from edge_agent.twin.session import TwinSession
from tests.infra.procs import free_port


async def _nothing(raw: bytes) -> None:
    return None


async def test_retries_with_capped_jittered_backoff(caplog: pytest.LogCaptureFixture) -> None:
    params = BrokerParams("127.0.0.1", free_port(), "unit-dev", None, None, None, 5)
    session = TwinSession(params, DeviceTopics("t", "unit-dev"), _nothing, reconnect_max_delay_s=1.0)
    caplog.set_level(logging.WARNING, logger="edge_agent.twin.session")
    task = asyncio.create_task(session.run())
    await asyncio.sleep(4.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    delays = [float(m) for m in re.findall(r"retry \d+ in ([0-9.]+) s", caplog.text)]
    assert len(delays) >= 4, caplog.text  # still trying, not given up
    assert all(0 <= d <= 1.0 for d in delays), delays  # capped
    assert len(set(delays)) > 1  # jittered, not a fixed interval
    assert not session.connected


async def test_publish_waits_for_a_connection(tmp_path: Path) -> None:
    params = BrokerParams("127.0.0.1", free_port(), "unit-dev", None, None, None, 5)
    session = TwinSession(params, DeviceTopics("t", "unit-dev"), _nothing)
    with pytest.raises(TimeoutError):
        await session.publish("t/unit-dev/telemetry/x", b"{}", timeout=0.3)


async def test_broken_tls_files_do_not_block_offline_boot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("ca.crt", "dev.crt", "dev.key"):
        (tmp_path / name).write_text("not a certificate\n")
    config = parse_config(
        f'[device]\nid = "unit-dev"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[mqtt]\ntls = true\nca_file = "{tmp_path / "ca.crt"}"\ncert_file = "{tmp_path / "dev.crt"}"\n'
        f'key_file = "{tmp_path / "dev.key"}"\n'
    )
    db = open_state_db(config.state.dir)
    seen: list[DesiredState] = []

    async def desired(state: DesiredState) -> None:
        seen.append(state)

    first = TwinComponent(config, db, ReportedState(), desired)
    await first.handle_desired(b'{"schema":1,"version":5,"deployment":{"modules":{}}}')
    second = TwinComponent(config, db, ReportedState(), desired)  # a reboot
    await second.start()
    assert [(s.version, s.source) for s in seen] == [(5, "broker"), (5, "stored")]
    with pytest.raises(ExceptionGroup) as info:  # the daemon's supervisor logs it and retries
        await second.run()
    assert info.group_contains(ssl.SSLError)
    assert "cannot load MQTT credentials/TLS files" in caplog.text
