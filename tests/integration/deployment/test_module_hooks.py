"""The real daemon wires its components around each module container: the module finds its own
telemetry socket at /run/edge-agent/telemetry.sock (served for that module only), and its image
digest is measured into the TPM's image PCR before it starts (swtpm), once per boot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.agent import AgentProcess
from devinfra.podman import PodmanService, podman
from devinfra.procs import wait_until
from devinfra.registry import Registry
from devinfra.swtpm import Swtpm
from edge_agent.control import exchange_line

from .conftest import RunImages, agent_config_text, owned
from .test_daemon import SLEEP, new_agent, wait_running


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    tpm = Swtpm(tmp_path / "tpm").start()
    yield tpm
    tpm.stop()


def send_record(sock_path: Path, record: dict[str, object]) -> dict[str, object]:
    result = exchange_line(sock_path, record, timeout=10)
    assert isinstance(result, dict)
    return result


def test_module_gets_its_telemetry_socket_and_its_image_is_measured(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    agents: list[AgentProcess],
    swtpm: Swtpm,
) -> None:
    runtime_dir = tmp_path / "run"
    config = agent_config_text(run_id, podman_service.url, registry).replace(
        "[attestation]\nenabled = false\n[telemetry]\nenabled = false\n",
        f'[attestation]\ntcti = "{swtpm.tcti}"\n[telemetry]\nruntime_dir = "{runtime_dir}"\n',
    )
    agent = new_agent(agents, tmp_path, config).start()
    image = images.image("one", "v1")
    agent.call("deploy", {"version": 1, "deployment": {"modules": {"sender": {"image": image, **SLEEP}}}})
    wait_running(agent, {"sender"})
    [container] = owned(run_id)
    name = container["Name"].lstrip("/")

    # What the module sees: its socket folder mounted read-only, and the variable pointing at it.
    mount = next(m for m in container["Mounts"] if m["Destination"] == "/run/edge-agent")
    assert mount["RW"] is False
    assert "EDGE_TELEMETRY_SOCKET=/run/edge-agent/telemetry.sock" in container["Config"]["Env"]
    seen = podman("exec", name, "sh", "-c", "test -S /run/edge-agent/telemetry.sock && echo socket")
    assert seen.stdout.strip() == "socket"

    # That socket is served for this module: a record sent through it is stored as the module's.
    answer = send_record(Path(mount["Source"]) / "telemetry.sock", {"stream": "hooks.test", "payload": {"n": 1}})
    assert answer["ok"] is True, answer
    figures = agent.call("telemetry")
    assert isinstance(figures, dict)
    assert "hooks.test" in json.dumps(figures)

    # The image was measured before the start, with the digest the container runs.
    digest = (
        container["ImageDigest"] if container.get("ImageDigest") else container["Config"]["Image"].rpartition("@")[2]
    )
    log_path = agent.state_dir / "attestation" / "image-measurements.jsonl"
    wait_until(log_path.exists, 10, "the image measurement log")
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(e["module"], e["digest"], e["deployment"]) for e in events] == [("sender", digest, "1")]
    status = agent.call("status")
    assert isinstance(status, dict)
    assert status["reported"]["attestation"]["imageEvents"] == 1

    # An agent restart adopts the running module: no second measurement in the same boot.
    agent.stop()
    agent.start()
    wait_running(agent, {"sender"})
    assert len(log_path.read_text().splitlines()) == 1
