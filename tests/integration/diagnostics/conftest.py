"""A real agent (with a journald of its own, devinfra/journald.py) running a real module under
the real podman service, connected to a real mutual-TLS mosquitto with the example ACL; edgectl
talks to it through the broker. Secrets are planted in the config (a registry password file and
a comment), the agent's environment, its TLS key file and the module's environment and output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devinfra.journald import JournaldAgent
from devinfra.podman import PodmanService
from devinfra.procs import wait_until
from devinfra.registry import Registry
from devinfra.twin_env import TwinEnv
from tests.integration.deployment.conftest import (  # noqa: F401  (fixtures)
    RunImages,
    cleanup_containers,
    images,
    run_id,
)
from tests.integration.twin.conftest import own_twin_env, pki  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[3]
PLANTED = {
    "config_file": "PLANTED-registry-password-7f3a9c",
    "config_comment": "PLANTED-comment-secret-51b2e8",
    "environment": "PLANTED-agent-env-token-c0ffee",
    "module_env": "PLANTED-module-db-password-d41d8c",
}
TICKER = (
    'echo "connecting with DB_PASSWORD=$DB_PASSWORD and token $AGENT_TOKEN" >&2; '
    'echo "key line: $KEY_LINE"; '
    "trap 'exit 0' TERM; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.5; done"
)


@dataclass
class Device:
    env: TwinEnv
    agent: JournaldAgent
    device_id: str
    key_lines: list[str]
    workdir: Path

    def edgectl(self, *args: str, cert: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        flags = self.env.edgectl_flags()
        if cert is not None:  # another identity (a device's certificate instead of the fleet's)
            client = self.env.pki.client(cert)
            flags[flags.index("--tls-cert") + 1] = str(client.cert)
            flags[flags.index("--tls-key") + 1] = str(client.key)
        return subprocess.run([sys.executable, "-m", "edgectl.cli", *args, *flags],
                              capture_output=True, text=True, timeout=timeout, cwd=self.workdir)

    def edgectl_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edgectl.cli", *args, *self.env.edgectl_flags()]

    def status(self) -> dict[str, Any]:
        status = self.agent.call("status")
        assert isinstance(status, dict)
        return status


def device_config(env: TwinEnv, device_id: str, podman_url: str, registry: Registry, workdir: Path,
                  extra: str = "") -> str:
    cert = env.pki.client(device_id)
    password_file = workdir / "registry-password"
    password_file.write_text(PLANTED["config_file"] + "\n")
    password_file.chmod(0o600)
    return (
        f"# the old registry password was {PLANTED['config_comment']}\n"
        f'[device]\nid = "{device_id}"\n'
        '[logging]\nlevel = "info"\nformat = "journal"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {env.broker.port}\ntopic_prefix = "{env.prefix}"\n'
        f'tls = true\nca_file = "{env.pki.ca}"\ncert_file = "{cert.cert}"\nkey_file = "{cert.key}"\n'
        "reconnect_max_delay_s = 2\nkeepalive_s = 5\n"
        "[twin]\nreport_min_interval_s = 0.2\nreport_stats_interval_s = 2\n"
        f'[podman]\nsocket = "{podman_url}"\nstop_grace_s = 2\n'
        "[attestation]\nenabled = false\n"
        f'[telemetry]\nruntime_dir = "{workdir / "run"}"\n'
        f'[trust]\ndocument_mode = "off"\ninsecure_registries = ["{registry.host}"]\n'
        f'[[trust.policy]]\nscope = "*"\nmode = "off"\n'
        f'[[trust.registry_auth]]\nregistry = "{registry.host}"\nusername = "ci"\npassword = "file:{password_file}"\n'
        f'[deployment]\ncontainer_prefix = "{device_id}-"\nlocal_deploy = true\nstabilisation_window_s = 2\n'
        + extra
    )


@pytest.fixture
def device(own_twin_env: TwinEnv, run_id: str, podman_service: PodmanService,  # noqa: F811
           registry: Registry, images: RunImages, tmp_path: Path) -> Iterator[Device]:  # noqa: F811
    workdir = tmp_path / "device"
    workdir.mkdir()
    text = device_config(own_twin_env, run_id, podman_service.url, registry, workdir)
    agent_env = {"PYTHONPATH": str(REPO), "EDGE_API_TOKEN": PLANTED["environment"]}
    agent = JournaldAgent(workdir / "agent", text, env=agent_env)
    cert = own_twin_env.pki.client(run_id)
    key_lines = [line for line in Path(cert.key).read_text().splitlines() if len(line) >= 16 and "-----" not in line]
    try:
        agent.start()
        module = {
            "image": images.image("ticker"), "command": ["sh", "-c"], "args": [TICKER],
            "env": {"DB_PASSWORD": PLANTED["module_env"], "AGENT_TOKEN": PLANTED["environment"],
                    "KEY_LINE": key_lines[0]},
        }
        agent.call("deploy", {"version": 1, "deployment": {"modules": {"ticker": module}}})
        dev = Device(own_twin_env, agent, run_id, key_lines, workdir)

        def running() -> bool:
            modules = dev.status()["reported"].get("modules") or {}
            return bool(modules.get("ticker", {}).get("runtimeStatus") == "running")

        wait_until(running, 120, f"module ticker running\n{agent.log()}", interval=0.5)
        yield dev
    finally:
        agent.stop()


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
