"""Hostile and failing desired documents against a device as in the field (real agent, mutual-TLS
mosquitto with the ACL, real registry with cosign-signed images, real podman).

For each case: the device reports the documented code, the running deployment keeps running
unchanged (same containers, same start times), no stored version, document or key changes, and
`edgectl deploy --wait` (where edgectl can send the case) exits 1 with the device's reason. Then
a normal deploy succeeds with the next version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from devinfra.podman import podman
from devinfra.procs import wait_until
from edge_shared.trust.keys import load_private_key
from edgectl.documents import sign_document

from .conftest import PASSPHRASE, Device

HUGE = 9007199254740991


def section(reported: dict[str, Any]) -> dict[str, Any]:
    return dict(reported.get("deployment") or {})


def refused(reported: dict[str, Any]) -> dict[str, Any]:
    return dict(section(reported).get("lastRefused") or {})


def unchanged_except_rejections(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> None:
    """Stored state is the same, except new status rows of versions whose images were rejected."""
    for table in ("desired_accepted", "deployment_slots", "trust_document_keys", "meta"):
        assert after[table] == before[table], table
    old = set(before["desired_versions"])
    added = [r for r in after["desired_versions"] if r not in old]
    assert set(before["desired_versions"]) <= set(after["desired_versions"])
    assert all(r[2] == "rejected" for r in added), added


async def test_hostile_and_failing_documents_change_nothing(device: Device) -> None:
    good = device.image("app", "v1", signed=True)
    device.agent.start()
    ok = await asyncio.to_thread(device.deploy, device.manifest(good), "--wait", "90", "--until", "running")
    assert ok.returncode == 0, ok.stderr + device.agent.log()[-3000:]
    assert f"{device.id}: version 1 probation" in ok.stdout or f"{device.id}: version 1 good" in ok.stdout
    await device.wait_reported(lambda r: section(r).get("lastKnownGood") == 1, "version 1 good")
    running = device.containers()
    assert set(running) == {"app"} and running["app"][2] != "not running"
    stored = device.stored_state()
    keys_before = stored["trust_document_keys"]
    rss_before = device.rss_kb()
    unsigned_image = device.image("app", "unsigned", signed=False)

    async def check_unchanged(case: str) -> None:
        assert device.containers() == running, case
        unchanged_except_rejections(stored, device.stored_state())
        now = section(await device.reported())
        assert now["current"] == 1 and now["lastKnownGood"] == 1, (case, now)

    async def raw_case(case: str, payload: bytes, code: str, version: int | None) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        await device.publish_raw(payload)
        reported = await device.wait_reported(lambda r: refused(r).get("digest") == digest, f"{case}: {code}")
        assert refused(reported)["code"] == code, (case, refused(reported))
        assert refused(reported).get("version") == version, case
        assert str(HUGE) not in json.dumps(section(reported)), "an unauthenticated version reached the report"
        await check_unchanged(case)

    async def edgectl_case(case: str, args: list[str], reason: str, *, key: str | None = "fleet",
                           manifest: Any = None) -> None:
        out = await asyncio.to_thread(
            device.deploy, manifest or device.manifest(good), *args, "--wait", "60", key=key
        )
        assert out.returncode == 1, (case, out.stdout, out.stderr)
        assert reason in out.stderr, (case, out.stderr)
        await check_unchanged(case)

    # --- unauthenticated: nothing of it reaches a version, a key or the disk
    await raw_case("unsigned, huge version",
                   json.dumps({"schema": 1, "version": HUGE, "deployment": {"modules": {}}}).encode(), "unsigned", None)
    await edgectl_case("unsigned via edgectl", [], "version 2 refused: unsigned", key=None)
    await edgectl_case("wrong key", [], "version 2 refused: untrusted_key", key="stranger")
    await raw_case("10,000 deep", b"[" * 10_000 + b"]" * 10_000, "too_deep", None)
    await raw_case("invalid UTF-8", b'{"schema":1,"version":9,"deployment":{"modules":{"\xff\xfe":{}}}}',
                   "invalid_utf8", None)
    await raw_case("a little over the limit (delivered)", b'{"pad":"' + b"x" * (1024 * 1024) + b'"}', "too_large", None)

    # --- 10 MB, the broker allowing it: the device's maximum packet size keeps it out of memory
    before_big = refused(await device.reported())
    for _ in range(10):
        await device.publish_raw(b'{"schema":1,"version":9,"pad":"' + b"y" * 10_000_000 + b'"}')
    async with device.fleet_client() as fleet:  # the broker took it and holds it retained
        assert len((await fleet.view(device.id)).desired_raw or b"") > 10_000_000
    await asyncio.sleep(3)
    assert refused(await device.reported()) == before_big  # never delivered to the device
    rss_after = device.rss_kb()
    print(f"agent RSS before ten 10 MB publishes {rss_before} kB, after {rss_after} kB "
          f"(+{rss_after - rss_before} kB)")
    assert rss_after - rss_before < 5 * 1024
    big = device.workdir / "big.json"
    big.write_text(json.dumps({"modules": {"app": {"image": good, **{"env": {"PAD": "z" * 2_000_000}}}}}))
    await edgectl_case("10 MB via edgectl", [], "the device accepts at most 1048576", manifest=big)
    await check_unchanged("10 MB")

    # --- authenticated but refused: the version is named, nothing else changes
    await edgectl_case("replayed", ["--version", "1"], "version 1 refused: replayed")
    await edgectl_case("expired", ["--expires-in", "0s"], "refused: expired")
    key = load_private_key(device.keys / "fleet.key", PASSPHRASE.encode())
    stale = sign_document({"schema": 1, "version": 50, "deployment": {"modules": {}}}, key,
                          expires_in=timedelta(hours=1), now=datetime.now(UTC) - timedelta(days=2))
    await raw_case("expired, signed two days ago", stale, "expired", 50)

    # --- rotation inside a refused document: the keys stay
    stranger_pub = str(device.keys / "stranger.pub")
    await edgectl_case("rotation in a replayed document", ["--version", "1", "--rotate-to", stranger_pub],
                       "refused: replayed")
    assert device.stored_state()["trust_document_keys"] == keys_before
    await edgectl_case("stranger after the refused rotation", [], "refused: untrusted_key", key="stranger")

    # --- a signed document naming an unsigned image: rejected, naming the module; with a rotation
    # inside, the keys stay too
    await edgectl_case("unsigned image", ["--rotate-to", stranger_pub], "rejected: ",
                       manifest=device.manifest(unsigned_image, "unsigned"))
    last = section(await device.reported())
    rejected = last["versions"][str(last["highestVersion"])]
    assert rejected["state"] == "rejected" and rejected["module"] == "app", rejected
    assert device.stored_state()["trust_document_keys"] == keys_before
    await edgectl_case("stranger after the rejected rotation", [], "refused: untrusted_key", key="stranger")

    # --- the tag moves after the deploy (to an unsigned image): what runs is pinned by digest
    podman("pull", "-q", "--tls-verify=false", unsigned_image)
    podman("push", "-q", "--tls-verify=false", unsigned_image, good)
    pinned = running["app"][1]
    podman("kill", running["app"][0])  # the module crashes: restarted from the pinned digest
    await asyncio.to_thread(
        wait_until, lambda: device.containers().get("app", ("", "", "not running"))[2] not in
        ("not running", running["app"][2]), 60, "the module restarted",
    )
    assert device.containers()["app"][1] == pinned  # same pinned image, not the moved tag
    running = device.containers()
    await edgectl_case("redeploy of the moved tag", [], "rejected: ")

    # --- a signed, verified deployment whose module crashes: rolled back; edgectl says so (exit 1)
    crashing = device.workdir / "crashing.json"
    # (by digest: the tag `good` now names the unsigned image)
    crashing.write_text(json.dumps({"modules": {"app": {"image": pinned, "command": ["sh", "-c", "sleep 1; exit 3"]}}}))
    out = await asyncio.to_thread(device.deploy, crashing, "--wait", "90", "--until", "good")
    assert out.returncode == 1 and "rolled_back: module_failed: module app" in out.stderr, out.stderr
    back = section(await device.reported())
    assert back["current"] == 1 and back["lastKnownGood"] == 1
    await asyncio.to_thread(
        wait_until, lambda: device.containers().get("app", ("", "", "not running"))[2] != "not running", 60,
        "version 1 running again",
    )
    assert device.containers()["app"][1] == pinned  # version 1's pinned image runs again

    # --- and a normal deploy still works, with the next version
    fixed = device.image("app", "v2", signed=True)
    highest = section(await device.reported())["highestVersion"]
    ok = await asyncio.to_thread(device.deploy, device.manifest(fixed, "fixed"), "--wait", "90", "--until", "running")
    assert ok.returncode == 0, ok.stderr + device.agent.log()[-3000:]
    assert f"published desired version {highest + 1}" in ok.stdout, (highest, ok.stdout)
    final = await device.wait_reported(lambda r: section(r).get("current") == highest + 1, "the next version runs")
    assert device.containers()["app"][1].endswith(final["modules"]["app"]["digest"])
    assert str(HUGE) not in json.dumps(final)
