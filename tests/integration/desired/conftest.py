"""A device as in the field, for the desired-state pipeline's end-to-end tests: the real agent
(subprocess), a real mosquitto with mutual TLS and the example ACL, the real OCI registry with
cosign-signed images, real podman, and fleet keys made by `edgectl keygen`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.pki import ClientCert, Pki, tls_broker, unique
from devinfra.podman import PodmanService, podman
from devinfra.registry import Registry
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient
from tests.integration.twin.helpers import stored_state

REPO = Path(__file__).resolve().parents[3]
PASSPHRASE = "fleet passphrase"
SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}


def edgectl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )


class Device:
    """One device and everything around it; `edgectl(...)` runs with the fleet's broker flags."""

    def __init__(
        self, workdir: Path, pki: Pki, broker: Mosquitto, prefix: str, fleet: ClientCert, registry: Registry,
        podman_url: str, base_image: str,
    ) -> None:
        self.workdir = workdir
        self.pki = pki
        self.broker = broker
        self.prefix = prefix
        self.fleet = fleet
        self.registry = registry
        self.run = uuid.uuid4().hex[:8]
        self.id = f"dp-{self.run}"
        self.base_image = base_image
        self.podman_url = podman_url
        self.keys = workdir / "keys"
        self.keys.mkdir(parents=True)
        for name in ("fleet", "image", "stranger"):
            out = edgectl("keygen", "--output-key-prefix", str(self.keys / name))
            assert out.returncode == 0, out.stderr
        self.config_text = self.agent_config(self.id)
        self.agent = AgentProcess(workdir / "agent", self.config_text, env={"PYTHONPATH": str(REPO)})
        self._built: set[str] = set()

    def agent_config(self, device_id: str, labels: dict[str, str] | None = None) -> str:
        """The config of a device `device_id` of this fleet (its own certificate and container
        prefix; the fleet's keys, registry and podman)."""
        cert = self.pki.client(device_id)
        broker, podman_url, registry = self.broker, self.podman_url, self.registry
        label_lines = "".join(f'{k} = "{v}"\n' for k, v in (labels or {}).items())
        return (
            f'[device]\nid = "{device_id}"\n'
            + (f"[device.labels]\n{label_lines}" if labels else "")
            + f'[logging]\nlevel = "info"\nformat = "text"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "{self.prefix}"\n'
            f'tls = true\nca_file = "{self.pki.ca}"\ncert_file = "{cert.cert}"\nkey_file = "{cert.key}"\n'
            f"reconnect_max_delay_s = 2\nkeepalive_s = 5\n"
            f"[twin]\nreport_min_interval_s = 0.2\n"
            f'[podman]\nsocket = "{podman_url}"\nstop_grace_s = 2\n'
            f"[attestation]\nenabled = false\n[telemetry]\nenabled = false\n"
            f'[trust]\ndocument_keys = ["{self.keys / "fleet.pub"}"]\ninsecure_registries = ["{registry.host}"]\n'
            f'[[trust.policy]]\nscope = "{registry.host}"\nmode = "enforce"\nkeys = ["{self.keys / "image.pub"}"]\n'
            f'[deployment]\ncontainer_prefix = "{device_id}-"\nstabilisation_window_s = 2\npoll_interval_s = 5\n'
        )

    # ---- images

    def image(self, name: str, tag: str, *, signed: bool, variant: str | None = None, script: str | None = None) -> str:
        """Push a distinct image to <registry>/dp/<run>-<name>:<tag>, cosign-signed with the fleet's
        image key (edgectl sign-image) when `signed`; with `script`, the image runs that shell script."""
        ref = f"{self.registry.host}/dp/{self.run}-{name}:{tag}"
        ctx = self.workdir / "images" / f"{name}-{tag}-{variant or 'x'}"
        ctx.mkdir(parents=True, exist_ok=True)
        run_script = ""
        if script is not None:
            (ctx / "run.sh").write_text(script)
            run_script = 'COPY run.sh /run.sh\nCMD ["/bin/sh", "/run.sh"]\n'
        (ctx / "Containerfile").write_text(
            f"FROM {self.base_image}\nLABEL dp-run={self.run} variant={name}-{tag}-{variant or 'x'}\n{run_script}"
        )
        local = f"localhost/dp-{self.run}-{name}:{tag}"
        podman("build", "-q", "--pull=never", "-t", local, str(ctx))
        podman("push", "-q", "--tls-verify=false", local, ref)
        podman("rmi", local)
        self._built.add(local)
        if signed:
            out = edgectl("sign-image", ref, "--key", str(self.keys / "image.key"),
                          "--insecure-registry", self.registry.host)
            assert out.returncode == 0, out.stderr
        return ref

    def manifest(self, image: str, name: str = "deployment") -> Path:
        path = self.workdir / f"{name}-{hashlib.sha256(image.encode()).hexdigest()[:8]}.json"
        path.write_text(json.dumps({"modules": {"app": {"image": image, **SLEEP}}}))
        return path

    # ---- fleet side

    def flags(self) -> list[str]:
        return ["--broker", "127.0.0.1", "--port", str(self.broker.port), *self.fleet_identity()]

    def fleet_identity(self) -> list[str]:
        """The fleet operator's --prefix and mutual-TLS flags (any broker of this fleet)."""
        return ["--prefix", self.prefix, "--tls-ca", str(self.pki.ca), "--tls-cert", str(self.fleet.cert),
                "--tls-key", str(self.fleet.key)]

    def edgectl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return edgectl(*args, timeout=timeout)

    def deploy(self, manifest: Path, *extra: str, key: str | None = "fleet") -> subprocess.CompletedProcess[str]:
        signing = ["--key", str(self.keys / f"{key}.key")] if key else []
        return edgectl("deploy", *self.flags(), self.id, str(manifest), *signing, *extra)

    def fleet_client(self) -> FleetClient:
        section = MqttSection(
            host="127.0.0.1", port=self.broker.port, topic_prefix=self.prefix, tls=True,
            ca_file=self.pki.ca, cert_file=self.fleet.cert, key_file=self.fleet.key,
        )
        return FleetClient(broker_params(section, f"{self.fleet.cn}-{unique()}"), self.prefix)

    async def reported(self) -> dict[str, Any]:
        async with self.fleet_client() as fleet:
            view = await fleet.view(self.id)
        return view.reported or {}

    async def wait_reported(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                            timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        async with self.fleet_client() as fleet:
            while time.monotonic() < deadline:
                last = (await fleet.view(self.id)).reported or {}
                if predicate(last):
                    return last
                await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last: {json.dumps(last.get('deployment'))[:3000]}\n"
                             f"{self.agent.log()[-3000:]}")

    async def publish_raw(self, payload: bytes) -> None:
        async with self.fleet_client() as fleet:
            await fleet.publish_desired_raw(self.id, payload)

    # ---- device side

    def stored_state(self) -> dict[str, list[tuple[Any, ...]]]:
        return stored_state(self.agent)

    def containers(self) -> dict[str, tuple[str, str, str]]:
        """module -> (container id, image, started at), from podman itself."""
        ids = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=edge-agent.device={self.id}").stdout.split()
        out = {}
        for cid in ids:
            doc = json.loads(podman("inspect", cid).stdout)[0]
            out[doc["Config"]["Labels"]["edge-agent.module"]] = (
                doc["Id"], doc["ImageName"], doc["State"]["StartedAt"] if doc["State"]["Running"] else "not running"
            )
        return out

    def rss_kb(self) -> int:
        assert self.agent.proc is not None and self.agent.proc.proc is not None
        for line in Path(f"/proc/{self.agent.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cleanup(self) -> None:
        ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={self.id}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)
        listing = podman("images", "--format", "{{.ID}} {{.Repository}}", check=False).stdout.splitlines()
        for image_id in {line.split()[0] for line in listing if f"dp-{self.run}" in line or f"/dp/{self.run}" in line}:
            podman("rmi", "-f", image_id, check=False)


@pytest.fixture
def device(
    tmp_path: Path, registry: Registry, podman_service: PodmanService, busybox_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Device]:
    pki = Pki(tmp_path / "pki")
    prefix = unique("dp")
    fleet = pki.client(unique("fleet"))
    broker = tls_broker(tmp_path / "mosquitto", pki, prefix, fleet.cn).start()
    dev = Device(tmp_path / "device", pki, broker, prefix, fleet, registry, podman_service.url, busybox_image)
    try:
        yield dev
    finally:
        if dev.agent.proc is not None and dev.agent.proc.alive():
            dev.agent.stop()
        dev.cleanup()
        broker.stop()
