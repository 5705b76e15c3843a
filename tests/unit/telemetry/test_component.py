"""The component in-process with a fake publisher: module sockets opened and closed by the
lifecycle API, records acknowledged and uploaded, config reload, figures in reported state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any

from edge_agent.config import parse_config
from edge_agent.control import ControlServer
from edge_agent.reported import ReportedState
from edge_agent.telemetry.component import TelemetryComponent
from tests.unit.telemetry.test_uplink import FakePublisher


async def send(path: Path, *docs: dict[str, Any]) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    await writer.drain()
    answers = [json.loads(await reader.readline()) for _ in docs]
    writer.close()
    return answers


def config(tmp_path: Path, extra: str = "") -> Any:
    return parse_config(
        f'[device]\nid = "dev9"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[telemetry]\nruntime_dir = "{tmp_path / "run"}"\nmodules = ["fixed"]\n{extra}'
    )


async def test_lifecycle_api_and_upload(tmp_path: Path) -> None:
    pub = FakePublisher()
    reported = ReportedState()
    control = ControlServer(tmp_path / "control.sock")
    comp = TelemetryComponent(config(tmp_path), reported, control, publisher=pub)
    assert "telemetry" in control.handlers
    await comp.start()
    assert comp.ingest_socket_path("fixed").exists(), "configured modules are served from start()"
    path = await comp.open_module("pilot")
    assert path == tmp_path / "run/ingest/pilot/telemetry.sock" and path.exists()
    assert comp.ingest_mount_dir("pilot") == path.parent
    # Sent before run(): waits for the committer, then is acknowledged.
    early = asyncio.create_task(send(path, {"stream": "s", "payload": {"early": True}}))
    await asyncio.sleep(0.2)
    assert not early.done()
    runner = asyncio.create_task(comp.run())
    try:
        assert (await early)[0]["ok"]
        answers = await send(path, *({"stream": "s", "priority": 1, "payload": {"i": i}} for i in range(20)))
        assert all(a["ok"] for a in answers)
        async with asyncio.timeout(10):
            while comp.queue.depth:
                await asyncio.sleep(0.02)
        sent = [r for _, doc in pub.sent for r in doc["records"]]
        assert sent[0]["payload"] == {"early": True} and len(sent) == 21
        assert {r["module"] for r in sent} == {"pilot"}
        assert pub.sent[0][0] == "edge/dev9/telemetry/s"
        async with asyncio.timeout(10):
            while (reported.get("telemetry") or {}).get("sentRecords") != 21:
                await asyncio.sleep(0.1)
        figures = reported.get("telemetry")
        assert figures["depth"] == 0 and figures["connected"] is True and figures["sockets"] == ["fixed", "pilot"]
        await comp.close_module("pilot")
        assert not path.exists() and not path.parent.exists()
        # Reload: new cap and a new always-served module; the old one stays served only if listed.
        await comp.apply_config(config(tmp_path, "cap_bytes = 100000\n").model_copy(
            update={"telemetry": config(tmp_path, "cap_bytes = 100000\n").telemetry.model_copy(
                update={"modules": ["other"]})}))
        assert comp.queue.cap_bytes == 100000
        assert comp.ingest_socket_path("other").exists() and not comp.ingest_socket_path("fixed").exists()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert not comp.ingest_socket_path("other").exists(), "sockets are removed when the agent stops"
    assert comp.ingest_mount_dir("other").exists(), "but directories stay for running containers"


async def test_records_carry_the_deployment_version_their_module_was_started_for(tmp_path: Path) -> None:
    pub = FakePublisher()
    reported = ReportedState()
    comp = TelemetryComponent(config(tmp_path), reported, None, publisher=pub)
    await comp.start()
    runner = asyncio.create_task(comp.run())
    try:
        # "fixed" was adopted (no start by this agent run): the device's current deployment, if any.
        path = comp.ingest_socket_path("fixed")
        assert (await send(path, {"stream": "s", "payload": {"n": 0}}))[0]["ok"]
        reported.set("deployment", {"current": 4})
        assert (await send(path, {"stream": "s", "payload": {"n": 1}}))[0]["ok"]
        # Started for version 5 while 4 is still current (an update in progress): 5.
        await comp.before_start("fixed", "img", 5)
        assert (await send(path, {"stream": "s", "payload": {"n": 2}}))[0]["ok"]
        reported.set("deployment", {"current": 6})  # current moved on, the container did not restart
        assert (await send(path, {"stream": "s", "payload": {"n": 3}}))[0]["ok"]
        async with asyncio.timeout(10):
            while comp.queue.depth:
                await asyncio.sleep(0.02)
        sent = [r for _, doc in pub.sent for r in doc["records"]]
        assert [(r["payload"]["n"], r.get("deployment")) for r in sent] == [(0, None), (1, 4), (2, 5), (3, 5)]
        assert "deployment" not in sent[0]  # unknown: absent, not null
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_pipelined_records_are_one_group_commit_and_answered_only_after_it(tmp_path: Path) -> None:
    """What the pilot does (telemetry.flush_s): several lines at once. They go into one append (one
    transaction, one fsync), and no answer leaves before that append returned."""
    comp = TelemetryComponent(config(tmp_path), ReportedState(), None, publisher=FakePublisher())
    await comp.start()
    path = await comp.open_module("pilot")
    real_append = comp.queue.append
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def blocking_append(batch: Any) -> Any:
        calls.append(len(batch))
        entered.set()
        assert release.wait(30), "the test did not release the commit"
        return real_append(batch)

    comp.queue.append = blocking_append  # type: ignore[method-assign]
    runner = asyncio.create_task(comp.run())
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"".join(json.dumps({"stream": "pilot.stats", "payload": {"i": i}, "key": f"k-{i}"}).encode()
                              + b"\n" for i in range(10)))
        await writer.drain()
        async with asyncio.timeout(10):
            while not entered.is_set():
                await asyncio.sleep(0.01)
        # The commit is under way: nothing may be answered yet (a read that returns is a violation).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                early = await reader.read(1)
                raise AssertionError(f"answered before the commit returned: {early!r}")
        release.set()
        answers = [json.loads(await reader.readline()) for _ in range(10)]
        writer.close()
        assert all(a["ok"] for a in answers), answers
        assert calls == [10], f"one append for the ten pipelined records, got appends of {calls}"
        assert len({a["id"] for a in answers}) == 10
    finally:
        release.set()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

