"""Signed desired documents end to end: edgectl keygen, the agent trusting that key, edgectl
deploy --key accepted; unsigned and wrongly signed documents refused with a reported code, and
the stored deployment left as it was."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.pki import unique
from devinfra.procs import wait_until
from devinfra.twin_env import TwinEnv
from tests.integration.twin.helpers import edgectl, refused_code, stored_state, version_state, wait_reported

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
            edgectl, "deploy", *flags, device, str(manifest), "--key", str(tmp_path / "fleet.key"),
            "--wait", "20", "--until", "admitted",
        )
        assert signed.returncode == 0, signed.stderr + agent.log()[-2000:]
        assert f"{device}: version 1 verifying" in signed.stdout
        before = stored_state(agent)
        assert before["desired_versions"] == []  # a verification in progress is not stored

        async with twin_env.fleet_client() as fleet:
            for args, code in (([], "unsigned"), (["--key", str(tmp_path / "stranger.key")], "untrusted_key")):
                out = await asyncio.to_thread(
                    edgectl, "deploy", *flags, device, str(manifest), *args, "--wait", "20", "--until", "admitted"
                )
                # Published, refused by the device: edgectl says so with the device's reason.
                assert out.returncode == 1 and f"version 2 refused: {code}" in out.stderr, out.stderr
                reported = await wait_reported(
                    fleet, device, lambda d, code=code: refused_code(d) == code, what=f"status {code}"
                )
                assert version_state(reported, 1) == "verifying" and version_state(reported, 2) is None
                assert stored_state(agent) == before, code
        assert agent.log().count("EVENT=desired.admitted") == 1
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
            await wait_reported(fleet, device, lambda d: refused_code(d) == "untrusted_key", what="untrusted_key")
            pid = agent.proc.proc.pid if agent.proc and agent.proc.proc else None
            agent.config_path.write_text(twin_env.agent_config(device, document_keys=[tmp_path / "new.pub"]))
            in_force = agent.log().count("EVENT=trust.document_keys_config")
            agent.signal(signal.SIGHUP)
            await asyncio.to_thread(
                wait_until, lambda: agent.log().count("EVENT=trust.document_keys_config") > in_force, 10,
                "the new document key in force",
            )
            out = await asyncio.to_thread(edgectl, "deploy", *deploy_new, "--wait", "20", "--until", "admitted")
            assert out.returncode == 0, out.stderr + agent.log()[-2000:]
            assert agent.proc is not None and agent.proc.proc is not None and agent.proc.proc.pid == pid
    finally:
        os.environ.pop("EDGECTL_KEY_PASSWORD", None)
        agent.stop()
