"""Signed desired documents end to end: edgectl keygen, the agent trusting that key, edgectl
deploy --key accepted; unsigned and wrongly signed documents refused with a reported code, and
the stored deployment left as it was."""

from __future__ import annotations

import asyncio
import json
import os
import signal
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
                    fleet,
                    device,
                    lambda d, code=code: desired_section(d).get("lastDesiredStatus", {}).get("code") == code,
                    what=f"status {code}",
                )
                assert desired_section(reported)["acceptedVersion"] == 1
                assert stored_desired(agent) == before, code
        assert agent.log().count("EVENT=deployment.received") == 1
    finally:
        os.environ.pop("EDGECTL_KEY_PASSWORD", None)
        agent.stop()


async def test_reload_with_a_new_document_key_applies_without_restart(twin_env: TwinEnv, tmp_path: Path) -> None:
    os.environ["EDGECTL_KEY_PASSWORD"] = "fleet passphrase"
    for name in ("old", "new"):
        out = await asyncio.to_thread(edgectl, "keygen", "--output-key-prefix", str(tmp_path / name))
        assert out.returncode == 0, out.stderr
    device = unique("dev")
    agent = AgentProcess(tmp_path / "agent", twin_env.agent_config(device, document_keys=[tmp_path / "old.pub"]))
    agent.start()
    try:
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps(MANIFEST))
        flags = twin_env.edgectl_flags()
        deploy_new = [*flags, device, str(manifest), "--key", str(tmp_path / "new.key")]
        async with twin_env.fleet_client() as fleet:
            out = await asyncio.to_thread(edgectl, "deploy", *deploy_new)
            assert out.returncode == 0, out.stderr
            await wait_reported(
                fleet,
                device,
                lambda d: desired_section(d).get("lastDesiredStatus", {}).get("code") == "untrusted_key",
                what="untrusted_key",
            )
            pid = agent.proc.proc.pid if agent.proc and agent.proc.proc else None
            agent.config_path.write_text(twin_env.agent_config(device, document_keys=[tmp_path / "new.pub"]))
            agent.signal(signal.SIGHUP)
            agent.wait_log("EVENT=trust.reloaded")
            out = await asyncio.to_thread(edgectl, "deploy", *deploy_new, "--wait", "20")
            assert out.returncode == 0, out.stderr + agent.log()[-2000:]
            assert agent.proc is not None and agent.proc.proc is not None and agent.proc.proc.pid == pid
    finally:
        os.environ.pop("EDGECTL_KEY_PASSWORD", None)
        agent.stop()
