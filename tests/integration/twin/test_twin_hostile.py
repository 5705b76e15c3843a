"""Hostile desired documents through the real broker into the real agent: each one is refused
with a reported code, and the stored and running deployment stay as they were."""

from __future__ import annotations

import json
from pathlib import Path

from tests.infra.agent import AgentProcess
from tests.integration.twin.conftest import TwinEnv
from tests.integration.twin.helpers import desired_section, stored_desired, wait_reported
from tests.integration.twin.pki import unique

GOOD = {"modules": {"pilot": {"image": "registry.local/pilot:1.0"}}}


def _hostile() -> list[tuple[str, bytes]]:
    return [
        ("invalid_json", b"this is not json {"),
        ("invalid_document", json.dumps({"schema": 1, "version": "9", "deployment": []}).encode()),
        ("unsupported_schema", json.dumps({"schema": 99, "version": 9, "deployment": GOOD}).encode()),
        ("replayed", json.dumps({"schema": 1, "version": 1, "deployment": GOOD}).encode()),
        ("too_large", b'{"schema":1,"version":9,"deployment":{"modules":{}},"pad":"' + b"x" * 10_000_000 + b'"}'),
        ("too_deep", b"[" * 10_000 + b"]" * 10_000),
        ("invalid_utf8", b'{"schema":1,"version":9,"deployment":{"modules":{"\xff\xfe":{}}}}'),
        ("invalid_deployment", json.dumps({"schema": 1, "version": 9, "deployment": {"modules": []}}).encode()),
    ]


async def test_hostile_documents_are_reported_and_change_nothing(twin_env: TwinEnv, tmp_path: Path) -> None:
    device = unique("dev")
    agent = AgentProcess(tmp_path / "agent", twin_env.agent_config(device)).start()
    try:
        async with twin_env.fleet_client() as fleet:
            await fleet.deploy(device, GOOD, version=2)
            await fleet.wait_accepted(device, 2, 20)
            before = stored_desired(agent)
            assert before is not None and before[0] == 2

            for code, payload in _hostile():
                await fleet.publish_desired_raw(device, payload)
                reported = await wait_reported(
                    fleet,
                    device,
                    lambda d, code=code: desired_section(d).get("lastDesiredStatus", {}).get("code") == code,
                    what=f"status {code}",
                )
                section = desired_section(reported)
                assert section["acceptedVersion"] == 2, (code, section)
                assert section["lastDesiredStatus"]["description"], code
                assert stored_desired(agent) == before, code
                agent.wait_log(f"CODE={code}")

            # The running deployment was handed over exactly once; refusals never reached it.
            assert agent.log().count("EVENT=deployment.received") == 1
            # And the device still takes the next good document.
            version = await fleet.deploy(device, GOOD)
            assert version == 10  # one above the highest version the device has seen (9)
            await fleet.wait_accepted(device, version, 20)
        assert stored_desired(agent) is not None and stored_desired(agent)[0] == 10  # type: ignore[index]
    finally:
        agent.stop()
