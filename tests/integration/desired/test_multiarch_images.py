"""The multi-arch pilot as a fleet ships it: scripts/build-images.sh builds the pilot for
linux/amd64 and linux/arm64 from the debootstrapped base of each and pushes one OCI index;
`edgectl sign-image` signs the index and each platform manifest. Two agents of one fleet take the
same deployment document's image: one linux/amd64 (this machine), one configured as linux/arm64
(its container runs under qemu-user). Each runs and reports its own platform's digest, and each
pilot drives (its telemetry line appears). An index re-pushed with a forged arm64 entry is refused
by the arm64 agent, whose pilot runs on untouched, and taken by the amd64 agent, whose entry is
still the signed one.

Emulation only: the arm64 pilot gets a Pi 4's /proc/cpuinfo and a slower simulator through
mounts in its deployment document (devinfra/multiarch.py, tests/pilot/test_pilot_arm64.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from devinfra.agent import AgentProcess
from devinfra.multiarch import (
    EMULATED_PILOT_CONFIG,
    MultiArch,
    build_multiarch,
    emulated_arm64_cpuinfo,
    forge_index,
    push_multiarch,
)
from devinfra.podman import podman

from .conftest import REPO, Device


def pilot(reported: dict[str, Any]) -> dict[str, Any]:
    return dict((reported.get("modules") or {}).get("pilot") or {})


def inspect_index(reference: str, registry_host: str, tmp_path: Path) -> list[dict[str, Any]]:
    """`podman manifest inspect` of a pushed index: its entries. podman manifest inspect has no
    --tls-verify, so the loopback registry is insecure in a registries.conf of our own."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n')
    out = subprocess.run(["podman", "manifest", "inspect", reference], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)})
    assert out.returncode == 0, out.stderr
    entries: list[dict[str, Any]] = json.loads(out.stdout)["manifests"]
    assert sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in entries) == [
        ("linux", "amd64"), ("linux", "arm64")
    ], entries
    print(f"podman manifest inspect {reference}:",
          json.dumps([{k: m[k] for k in ("digest", "size", "platform")} for m in entries]))
    return entries


def document(path: Path, image: str, emulation: Path | None = None) -> Path:
    spec: dict[str, Any] = {"image": image, "restartPolicy": "always", "network": "none",
                            "args": ["drive", "--config", "/etc/edge-pilot/config.json"]}
    if emulation is not None:
        spec["args"] = ["drive", "--config", "/emulation/emulated.json"]
        spec["mounts"] = [{"source": str(emulation), "target": "/emulation", "readOnly": True},
                          {"source": str(emulation / "cpuinfo"), "target": "/proc/cpuinfo", "readOnly": True}]
    path.write_text(json.dumps({"modules": {"pilot": spec}}))
    return path


def drives(container_id: str, timeout: float = 1800) -> str:
    """Waits for the pilot's first stats line (it checked its model on the reference frames, loaded
    it and ran inference); returns it. The timeout is only a net for a hung emulator: under qemu on
    a busy machine the check alone can take minutes."""
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = podman("logs", container_id, check=False).stderr + podman("logs", container_id, check=False).stdout
        for line in logs.splitlines():
            if "stats pilot.stats" in line:
                return line
        time.sleep(2)
    raise AssertionError(f"the pilot in {container_id[:12]} never reported stats:\n{logs[-2000:]}")


def containers(device_id: str) -> dict[str, tuple[str, str, str]]:
    out = {}
    listed = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=edge-agent.device={device_id}")
    for cid in listed.stdout.split():
        doc = json.loads(podman("inspect", cid).stdout)[0]
        out[doc["Config"]["Labels"]["edge-agent.module"]] = (
            doc["Id"], doc["ImageName"], doc["State"]["StartedAt"] if doc["State"]["Running"] else "not running"
        )
    return out


async def test_one_signed_multiarch_pilot_runs_its_own_platform_on_amd64_and_arm64_agents(
    device: Device, tmp_path: Path
) -> None:
    host = device.registry.host
    reference, index_digest = await asyncio.to_thread(push_multiarch, "pilot", f"{host}/dp/{device.run}", "1.0")
    repository = reference.rsplit(":", 1)[0]

    entries = inspect_index(reference, host, tmp_path)
    digests = {m["platform"]["architecture"]: m["digest"] for m in entries}
    signed = device.edgectl("sign-image", reference, "--key", str(device.keys / "image.key"),
                            "--insecure-registry", host, timeout=300)
    assert signed.returncode == 0, signed.stderr

    # the arm64 agent: the fixture's, told it is linux/arm64, with the emulation files as a mount root
    emulation = tmp_path / "emulation"
    emulation.mkdir(mode=0o755)
    emulated_arm64_cpuinfo(emulation / "cpuinfo")
    (emulation / "emulated.json").write_text(json.dumps(EMULATED_PILOT_CONFIG))
    (emulation / "emulated.json").chmod(0o644)
    tmp_path.chmod(0o755)
    arm_text = device.config_text.replace(f'id = "{device.id}"\n', f'id = "{device.id}"\nplatform = "linux/arm64"\n', 1)
    device.agent.config_path.write_text(arm_text + f'allowed_mount_roots = ["{emulation}"]\n')
    device.agent.start()
    # the amd64 agent: a second device of the same fleet, on this machine's platform
    amd_id = f"{device.id}-x86"
    amd_text = device.agent_config(amd_id).replace(
        f'id = "{amd_id}"\n', f'id = "{amd_id}"\nplatform = "linux/amd64"\n', 1
    )
    amd64 = AgentProcess(tmp_path / "agent-amd64", amd_text, env={"PYTHONPATH": str(REPO)}).start()
    try:
        arm_ok, amd_ok = await asyncio.gather(
            asyncio.to_thread(device.edgectl, "deploy", *device.flags(), device.id,
                              str(document(tmp_path / "arm.json", reference, emulation)),
                              "--key", str(device.keys / "fleet.key"), "--wait", "240", "--until", "running",
                              timeout=300),
            asyncio.to_thread(device.edgectl, "deploy", *device.flags(), amd_id,
                              str(document(tmp_path / "amd.json", reference)),
                              "--key", str(device.keys / "fleet.key"), "--wait", "240", "--until", "running",
                              timeout=300),
        )
        assert arm_ok.returncode == 0, arm_ok.stdout + arm_ok.stderr + device.agent.log()[-3000:]
        assert amd_ok.returncode == 0, amd_ok.stdout + amd_ok.stderr + amd64.log()[-3000:]

        for device_id, arch, machine, platform in ((device.id, "arm64", "aarch64", "linux/arm64/v8"),
                                                    (amd_id, "amd64", "x86_64", "linux/amd64")):
            running = containers(device_id)["pilot"]
            assert running[1] == f"{repository}@{digests[arch]}" and running[2] != "not running", running
            assert podman("exec", running[0], "uname", "-m").stdout.strip() == machine
            print(f"{platform}: {running[0][:12]} runs {running[1]}; {drives(running[0])[:300]}")
        reported = await device.wait_reported(lambda r: pilot(r).get("runtimeStatus") == "running", "arm64 running")
        assert (pilot(reported)["digest"], pilot(reported)["indexDigest"], pilot(reported)["platform"]) == (
            digests["arm64"], index_digest, "linux/arm64/v8"
        ), pilot(reported)
        async with device.fleet_client() as fleet:
            amd_reported = (await fleet.view(amd_id)).reported or {}
        assert (pilot(amd_reported)["digest"], pilot(amd_reported)["indexDigest"], pilot(amd_reported)["platform"]) == (
            digests["amd64"], index_digest, "linux/amd64"
        ), pilot(amd_reported)

        # Someone who can push but not sign re-pushes the index with another arm64 manifest.
        intruder = build_multiarch(host, f"dp/{device.run}/edge-pilot", "intruder", device.base_image,
                                   marker="intruder", local_prefix=f"localhost/dp-{device.run}-intruder")
        image = MultiArch(reference, repository.split("/", 1)[1], index_digest, digests)
        forged_digest = forge_index(host, image, intruder.digests["arm64"], "1.1")
        forged = f"{repository}:1.1"
        arm_before = containers(device.id)["pilot"]
        arm_refused, amd_took = await asyncio.gather(
            asyncio.to_thread(device.edgectl, "deploy", *device.flags(), device.id,
                              str(document(tmp_path / "arm-forged.json", forged, emulation)),
                              "--key", str(device.keys / "fleet.key"), "--wait", "120", timeout=200),
            asyncio.to_thread(device.edgectl, "deploy", *device.flags(), amd_id,
                              str(document(tmp_path / "amd-forged.json", forged)),
                              "--key", str(device.keys / "fleet.key"), "--wait", "120", "--until", "running",
                              timeout=200),
        )
        assert arm_refused.returncode == 1, arm_refused.stdout + arm_refused.stderr
        assert "unsigned" in arm_refused.stdout + arm_refused.stderr
        reported = await device.wait_reported(
            lambda r: (r.get("deployment") or {}).get("versions", {}).get("2", {}).get("state") == "rejected",
            "version 2 rejected on arm64",
        )
        status = reported["deployment"]["versions"]["2"]
        assert (status["code"], status["module"]) == ("unsigned", "pilot"), status
        assert containers(device.id)["pilot"] == arm_before  # the signed arm64 pilot drives on, untouched
        assert pilot(reported)["digest"] == digests["arm64"]

        assert amd_took.returncode == 0, amd_took.stdout + amd_took.stderr + amd64.log()[-3000:]
        running = containers(amd_id)["pilot"]
        assert running[1] == f"{repository}@{digests['amd64']}" and running[2] != "not running", running
        async with device.fleet_client() as fleet:
            amd_reported = (await fleet.view(amd_id)).reported or {}
        assert (pilot(amd_reported)["digest"], pilot(amd_reported)["indexDigest"]) == (
            digests["amd64"], forged_digest
        ), pilot(amd_reported)
    finally:
        amd64.stop()
        ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={amd_id}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)


async def test_the_agent_image_is_one_signed_index_of_amd64_and_arm64(device: Device, tmp_path: Path) -> None:
    """The agent's own image (the Containerfile, scripts/build-agent-image.sh per architecture),
    pushed as one index by scripts/build-images.sh and signed once: `edgectl verify-image` checks
    both platforms, and each platform's digest pulled from the registry runs its own architecture."""
    host = device.registry.host
    reference, index_digest = await asyncio.to_thread(push_multiarch, "agent", f"{host}/dp/{device.run}", "0.1")
    digests = {m["platform"]["architecture"]: m["digest"] for m in inspect_index(reference, host, tmp_path)}
    key = str(device.keys / "image.key")
    signed = device.edgectl("sign-image", reference, "--key", key, "--insecure-registry", host, timeout=300)
    assert signed.returncode == 0, signed.stderr
    verified = device.edgectl("verify-image", reference, "--key", str(device.keys / "image.pub"),
                              "--insecure-registry", host, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert digests["amd64"] in verified.stdout and digests["arm64"] in verified.stdout, verified.stdout
    repository = reference.rsplit(":", 1)[0]
    for arch, machine in (("amd64", "x86_64"), ("arm64", "aarch64")):
        pinned = f"{repository}@{digests[arch]}"
        podman("pull", "-q", "--tls-verify=false", pinned, timeout=600)
        ran = podman("run", "--rm", "--network=none", pinned, "version", "--json", timeout=300)
        assert json.loads(ran.stdout)["arch"] == machine, ran.stdout
    assert index_digest.startswith("sha256:")
