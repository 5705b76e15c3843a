"""Topics, envelopes, command dispatch, and edgectl's rendering."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.twin.session import CommandRegistry, run_command
from edge_shared import protocol
from edge_shared.protocol import DeviceTopics
from edgectl.client import DeviceView
from edgectl.show import render_devices, render_view


def test_topics() -> None:
    t = DeviceTopics("acme/edge", "rover-1")
    assert t.desired == "acme/edge/rover-1/desired"
    assert t.reported == "acme/edge/rover-1/reported"
    assert t.presence == "acme/edge/rover-1/presence"
    assert t.commands_filter == "acme/edge/rover-1/commands/+"
    assert t.command_name("acme/edge/rover-1/commands/ping") == "ping"
    assert t.command_name("acme/edge/rover-1/commands/a/b") is None
    assert t.command_name("acme/edge/rover-2/commands/ping") is None
    assert t.telemetry("imu") == "acme/edge/rover-1/telemetry/imu"
    assert protocol.fleet_response_topic("acme/edge", "ops-1") == "acme/edge/fleet/responses/ops-1"
    assert protocol.device_of("acme/edge", "acme/edge/rover-1/presence") == "rover-1"
    assert protocol.device_of("acme/edge", "acme/edge/fleet/responses/x") is None


def test_presence_envelopes() -> None:
    status, ts = protocol.parse_presence(protocol.presence_payload("online"))
    assert status == "online" and ts is not None
    assert protocol.parse_presence(protocol.presence_payload("offline")) == ("offline", None)
    assert protocol.parse_presence(b"offline") == ("offline", None)
    assert protocol.parse_presence(b"\xff") == ("unknown", None)


async def test_commands_answer_errors_instead_of_failing() -> None:
    registry = CommandRegistry()

    async def echo(args: dict[str, Any]) -> dict[str, Any]:
        return {"got": args}

    async def broken(args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no")

    registry.register("echo", echo)
    registry.register("broken", broken)
    ok = json.loads(await run_command(registry, "echo", protocol.command_request({"x": 1})))
    assert ok == {"schema": 1, "ok": True, "result": {"got": {"x": 1}}}
    assert json.loads(await run_command(registry, "echo", b""))["ok"] is True
    async def err(name: str, payload: bytes) -> dict[str, str]:
        answer = json.loads(await run_command(registry, name, payload))
        assert answer["ok"] is False
        return dict(answer["error"])

    assert (await err("nope", b"{}"))["code"] == "unknown_command"
    assert "unknown command 'nope'" in (await err("nope", b"{}"))["description"]
    assert await err("broken", b"{}") == {"code": "internal_error", "description": "ValueError: no"}
    assert (await err("echo", b"[1]"))["code"] == "bad_request"
    assert (await err("echo", b"{" * 100_000))["code"] == "bad_request"
    assert (await err("echo", b" " * 300_000))["code"] == "too_large"

    async def refuses(args: dict[str, Any]) -> dict[str, Any]:
        raise protocol.CommandFailed("attestation_unavailable", "no TPM")

    registry.register("refuses", refuses)
    assert await err("refuses", b"{}") == {"code": "attestation_unavailable", "description": "no TPM"}


def test_show_marks_differences() -> None:
    retained = b'{"schema":1,"version":3}'
    import hashlib

    mine = hashlib.sha256(retained).hexdigest()
    view = DeviceView(
        "rover-1",
        desired={"version": 3, "deployment": {"modules": {"pilot": {"image": "p:2"}, "cam": {"image": "c:1"}}}},
        desired_raw=retained,
        reported={
            "ts": 1000.0,
            "deployment": {
                "current": 2,
                "lastKnownGood": 2,
                "versions": {
                    "2": {"state": "good", "digest": "aa"},
                    "1": {"state": "rolled_back", "code": "module_failed", "module": "pilot", "digest": "bb"},
                },
                "lastRefused": {"code": "replayed", "description": "old", "digest": mine, "version": 3, "at": "t"},
            },
            "modules": {
                "pilot": {"runtimeStatus": "running", "image": "p:1"},
                "cam": {"runtimeStatus": "running", "image": "c:1"},
                "old": {"runtimeStatus": "running"},
            },
        },
        presence="offline",
    )
    text = render_view(view, color=False, now=1030.0)
    lines = text.splitlines()
    assert lines[0] == "device rover-1: offline, last report 30 s ago"
    assert "! desired version 3   device runs 2 (last known good 2)" in lines
    assert "  version 2: good" in lines
    assert "! version 1: rolled_back: module_failed: pilot" in lines
    assert any(line.startswith("! last refused document (version 3, the one on the broker): replayed: old")
               for line in lines)
    assert any(line.startswith("! pilot") for line in lines)  # image differs
    assert any(line.startswith("  cam") for line in lines)  # matches
    assert any(line.startswith("! old") and "(not desired)" in line for line in lines)
    colored = render_view(view, color=True, now=1030.0)
    assert "\033[31m! pilot" in colored

    table = render_devices([view, DeviceView("rover-2", presence="online")], now=1030.0)
    assert "rover-1" in table and "30 s ago" in table and "rover-2" in table and "now" in table
