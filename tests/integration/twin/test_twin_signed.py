"""Signed desired documents end to end: edgectl keygen, the agent trusting that key, edgectl
deploy --key accepted; unsigned and wrongly signed documents refused with a reported code, and
the stored deployment left as it was."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.infra.agent import AgentProcess
from tests.integration.twin.conftest import TwinEnv
from tests.integration.twin.helpers import desired_section, edgectl, stored_desired, wait_reported
from tests.integration.twin.pki import unique

MANIFEST = {"modules": {"pilot": {"image": "registry.local/pilot:1.0"}}}


async def test_signed_deploy_is_accepted_and_unsigned_or_foreign_is_refused(twin_env: TwinEnv, tmp_path: Path) -> None:
    os.environ["EDGECTL_KEY_PASSWORD"] = "fleet passphrase"
    for name in ("fleet", "stranger"):
        out = await asyncio.to_thread(edgectl, "keygen", "--output-key-prefix", str(tmp_path / name))
        assert out.returncode == 0, out.stderr
    device = unique("dev")
    config = twin_env.agent_config(device, document_keys=[tmp_path / "fleet.pub"])
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps(MANIFEST))
        flags = twin_env.edgectl_flags()
        signed = await asyncio.to_thread(
            edgectl, "deploy", *flags, device, str(manifest), "--key", str(tmp_path / "fleet.key"), "--wait", "20"
        )
        assert signed.returncode == 0, signed.stderr + agent.log()[-2000:]
        assert f"{device}: version 1 accepted" in signed.stdout
        before = stored_desired(agent)
        assert before is not None and before[0] == 1

        async with twin_env.fleet_client() as fleet:
            for args, code in (([], "unsigned"), (["--key", str(tmp_path / "stranger.key")], "untrusted_key")):
                out = await asyncio.to_thread(edgectl, "deploy", *flags, device, str(manifest), *args)
                assert out.returncode == 0, out.stderr  # published; the device decides
                reported = await wait_reported(
                    fleet, device,
                    lambda d, code=code: desired_section(d).get("lastDesiredStatus", {}).get("code") == code,
                    what=f"status {code}",
                )
                assert desired_section(reported)["acceptedVersion"] == 1
                assert stored_desired(agent) == before, code
        assert agent.log().count("EVENT=deployment.received") == 1
    finally:
        os.environ.pop("EDGECTL_KEY_PASSWORD", None)
        agent.stop()
