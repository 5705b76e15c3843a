"""A signed multi-arch image (an OCI index of linux/amd64 and linux/arm64, built and pushed with
podman manifest) deployed to the real agent configured as linux/amd64: the container runs the
amd64 platform digest, and the reported modules section says which platform digest runs, from
which index. Pinning the index digest in the deployment gives the same."""

from __future__ import annotations

import asyncio
from typing import Any

from devinfra.multiarch import arm64_busybox, build_multiarch, forge_index
from devinfra.podman import podman

from .conftest import Device


def app(reported: dict[str, Any]) -> dict[str, Any]:
    return dict((reported.get("modules") or {}).get("app") or {})


def with_platform(device: Device, platform: str) -> None:
    text = device.config_text.replace(f'id = "{device.id}"\n', f'id = "{device.id}"\nplatform = "{platform}"\n', 1)
    assert text != device.config_text
    device.agent.config_path.write_text(text)


async def test_amd64_agent_runs_the_amd64_digest_of_a_signed_index(device: Device) -> None:
    host = device.registry.host
    image = build_multiarch(host, f"dp/{device.run}-multi", "v1", device.base_image,
                            local_prefix=f"localhost/dp-{device.run}-multi")
    signed = device.edgectl("sign-image", image.reference, "--key", str(device.keys / "image.key"),
                            "--insecure-registry", host)
    assert signed.returncode == 0, signed.stderr
    with_platform(device, "linux/amd64")
    device.agent.start()

    ok = await asyncio.to_thread(device.deploy, device.manifest(image.reference), "--wait", "90", "--until", "running")
    assert ok.returncode == 0, ok.stderr + device.agent.log()[-3000:]
    reported = await device.wait_reported(lambda r: app(r).get("runtimeStatus") == "running", "app running")
    entry = app(reported)
    assert (entry["image"], entry["digest"], entry["indexDigest"], entry["platform"]) == (
        image.reference, image.digests["amd64"], image.index_digest, "linux/amd64"
    ), entry
    running = device.containers()["app"]
    assert running[1] == image.pinned("amd64") and running[2] != "not running"
    arch = podman("image", "inspect", "--format", "{{.Architecture}}", image.pinned("amd64")).stdout.strip()
    assert arch == "amd64"
    assert podman("exec", running[0], "cat", "/marker").stdout.strip() != ""

    # version 2 pins the index digest: the same platform digest runs
    pinned = device.manifest(image.pinned("index"), "pinned-index")
    ok = await asyncio.to_thread(device.deploy, pinned, "--wait", "90", "--until", "running")
    assert ok.returncode == 0, ok.stderr + device.agent.log()[-3000:]
    reported = await device.wait_reported(
        lambda r: app(r).get("image") == image.pinned("index") and app(r).get("runtimeStatus") == "running",
        "version 2 running",
    )
    entry = app(reported)
    assert (entry["digest"], entry["indexDigest"], entry["platform"]) == (
        image.digests["amd64"], image.index_digest, "linux/amd64"
    ), entry
    assert device.containers()["app"][1] == image.pinned("amd64")


async def test_arm64_agent_runs_the_arm64_digest_under_emulation_and_refuses_a_replaced_entry(
    device: Device,
) -> None:
    """The same kind of index deployed to an agent configured as linux/arm64: the container runs
    the arm64 manifest (an arm64 busybox, executed through qemu-user-static's binfmt handler).
    An index re-pushed with its arm64 entry replaced is refused there, and still runs on amd64."""
    host = device.registry.host
    image = build_multiarch(host, f"dp/{device.run}-multi", "v1", device.base_image,
                            arm64_busybox=arm64_busybox(), local_prefix=f"localhost/dp-{device.run}-multi")
    signed = device.edgectl("sign-image", image.reference, "--key", str(device.keys / "image.key"),
                            "--insecure-registry", host)
    assert signed.returncode == 0, signed.stderr
    with_platform(device, "linux/arm64")
    device.agent.start()

    ok = await asyncio.to_thread(device.deploy, device.manifest(image.reference), "--wait", "100", "--until", "running")
    assert ok.returncode == 0, ok.stderr + device.agent.log()[-3000:]
    reported = await device.wait_reported(lambda r: app(r).get("runtimeStatus") == "running", "app running", 60)
    entry = app(reported)
    assert (entry["digest"], entry["indexDigest"], entry["platform"]) == (
        image.digests["arm64"], image.index_digest, "linux/arm64/v8"
    ), entry
    running = device.containers()["app"]
    assert running[1] == image.pinned("arm64") and running[2] != "not running"
    arch = podman("image", "inspect", "--format", "{{.Architecture}}", image.pinned("arm64")).stdout.strip()
    assert arch == "arm64"
    assert podman("exec", running[0], "uname", "-m").stdout.strip() == "aarch64"
    assert podman("exec", running[0], "cat", "/marker").stdout.strip() != ""

    # Someone who can push but not sign replaces the arm64 entry (tag v2: the amd64 entry kept).
    intruder = build_multiarch(host, f"dp/{device.run}-multi", "intruder", device.base_image,
                               arm64_busybox=arm64_busybox(), marker="intruder",
                               local_prefix=f"localhost/dp-{device.run}-multi")
    forged_digest = forge_index(host, image, intruder.digests["arm64"], "v2")
    forged = f"{image.repository}:v2"
    refused = await asyncio.to_thread(device.deploy, device.manifest(forged, "forged"), "--wait", "100")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    reported = await device.wait_reported(
        lambda r: (r.get("deployment") or {}).get("versions", {}).get("2", {}).get("state") == "rejected",
        "version 2 rejected",
    )
    status = reported["deployment"]["versions"]["2"]
    assert (status["code"], status["module"]) == ("unsigned", "app"), status
    assert device.containers()["app"] == running  # the arm64 module of version 1 runs on, untouched
    assert app(reported)["digest"] == image.digests["arm64"]

    # The same device as linux/amd64 (restarted with that platform) takes the forged tag: its
    # amd64 entry is the signed amd64 manifest.
    device.agent.stop()
    with_platform(device, "linux/amd64")
    device.agent.start()
    ok = await asyncio.to_thread(device.deploy, device.manifest(forged, "forged-amd64"), "--wait", "100",
                                 "--until", "running")
    assert ok.returncode == 0, ok.stderr + device.agent.log()[-3000:]
    reported = await device.wait_reported(
        lambda r: app(r).get("image") == forged and app(r).get("runtimeStatus") == "running", "amd64 running"
    )
    entry = app(reported)
    assert (entry["digest"], entry["indexDigest"], entry["platform"]) == (
        image.digests["amd64"], forged_digest, "linux/amd64"
    ), entry
    assert device.containers()["app"][1] == image.pinned("amd64")
