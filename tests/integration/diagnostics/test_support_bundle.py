"""The support bundle from a real agent: remotely (`edgectl support-bundle`, the device sends it
over the broker in chunks) and on the device (`edge-agent support-bundle`, run in the agent's
mount namespace, where its journal is). Every planted secret was really there to leak (the test
checks that first), and no byte of the bundle holds one: the .tar.gz file, the tar inside it,
every member's name and content."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from devinfra.podman import podman
from devinfra.procs import wait_until

from .conftest import PLANTED, REPO, Device

EXPECTED = {"bundle.json", "check.txt", "status.json", "status.txt", "config.toml", "journal.txt",
            "modules/ticker.log", "versions.json", "state-db.json", "health.json", "podman-info.json"}


def planted_secrets(device: Device) -> list[str]:
    return [*PLANTED.values(), *device.key_lines]


def assert_secrets_were_there(device: Device) -> None:
    """Without this a bundle that leaked nothing because nothing was there would pass."""
    config = device.agent.config_path.read_text()
    assert PLANTED["config_comment"] in config
    assert PLANTED["config_file"] in (device.workdir / "registry-password").read_text()
    pid = device.status()["pid"]
    assert PLANTED["environment"].encode() in Path(f"/proc/{pid}/environ").read_bytes()
    container = f"{device.device_id}-ticker"
    logs = podman("logs", container)
    assert PLANTED["module_env"] in logs.stderr and PLANTED["environment"] in logs.stderr
    assert device.key_lines[0] in logs.stdout


def bundle_blobs(path: Path) -> dict[str, bytes]:
    raw = path.read_bytes()
    blobs = {"<file>": raw, "<tar>": gzip.decompress(raw)}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            assert member.isfile() and member.mode == 0o600, member
            blobs["<names>"] = blobs.get("<names>", b"") + member.name.encode() + b"\n"
            extracted = tar.extractfile(member)
            assert extracted is not None
            blobs[member.name.split("/", 1)[1]] = extracted.read()
    return blobs


def check_bundle(device: Device, path: Path) -> dict[str, bytes]:
    blobs = bundle_blobs(path)
    for secret in planted_secrets(device):
        for name, blob in blobs.items():
            assert secret.encode() not in blob, f"planted secret {secret[:12]}... found in {name}"
    files = set(blobs) - {"<file>", "<tar>", "<names>"}
    assert files == EXPECTED, files
    manifest = json.loads(blobs["bundle.json"])
    assert manifest["device"] == device.device_id and manifest["missing"] == {}, manifest
    # Useful as well as safe: each part says what a technician needs.
    assert b"podman" in blobs["check.txt"] and b"power and throttling" in blobs["check.txt"]
    assert json.loads(blobs["status.json"])["device"] == device.device_id
    assert b"ticker" in blobs["status.txt"] and b"health" in blobs["status.txt"]
    config = blobs["config.toml"].decode()
    assert f'password = "file:{device.workdir}/registry-password"' in config  # a reference stays readable
    assert "#" not in config and "old registry password" not in config  # comments can hold anything
    assert b"EVENT=agent.started" in blobs["journal.txt"]
    ticker = blobs["modules/ticker.log"].decode()
    assert "tick-0" in ticker and "DB_PASSWORD=[REDACTED]" in ticker and "key line: [REDACTED]" in ticker
    versions = json.loads(blobs["versions.json"])
    assert versions["edge-agent"] and versions["podman"] and versions["python"]
    db = json.loads(blobs["state-db.json"])
    assert db["quickCheck"] == "ok" and db["tables"]["desired_versions"] >= 1 and "rows" not in db
    health = json.loads(blobs["health.json"])
    assert health["memory"]["totalBytes"] > 0 and "ticker" in health["modules"]
    assert json.loads(blobs["podman-info.json"])["version"]["Version"]
    return blobs


def test_remote_bundle_over_the_broker(device: Device, tmp_path: Path) -> None:
    assert_secrets_were_there(device)
    wait_until(lambda: "tick-3" in podman("logs", f"{device.device_id}-ticker").stdout, 60, "ticks")
    out = tmp_path / "remote.tar.gz"
    done = device.edgectl("support-bundle", device.device_id, "-o", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    check_bundle(device, out)
    counts = device.agent.call("diagnostics")["counts"]  # type: ignore[index]
    assert counts["bundle.created"] == 1 and counts["bundle.chunks"] >= 1
    blobs = bundle_blobs(out)
    print("bundle files:", sorted(set(blobs) - {"<file>", "<tar>", "<names>"}))
    print(blobs["check.txt"].decode(), blobs["status.txt"].decode(), sep="\n")


def test_technician_bundle_on_the_device(device: Device, tmp_path: Path) -> None:
    assert_secrets_were_there(device)
    out = tmp_path / "local.tar.gz"
    pid = device.status()["pid"]
    # In the agent's mount namespace, where its journal is (on a device there is only one).
    done = subprocess.run(
        ["nsenter", "--target", str(pid), "--mount", sys.executable, "-m", "edge_agent.cli", "support-bundle",
         "--config", str(device.agent.config_path), "--state-dir", str(device.agent.state_dir), "-o", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert "secrets are redacted" in done.stdout
    blobs = check_bundle(device, out)
    assert b"PASS  agent running" in blobs["check.txt"], blobs["check.txt"].decode()
