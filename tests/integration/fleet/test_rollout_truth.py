"""Rollouts that tell the truth and exclude each other, against 20 real `edge-agent` processes on a
mutual-TLS mosquitto with the ACL (docs/deployment.md, "One rollout at a time").

The deployments carry no module (the claim, the gate and the counts are what is under test, not
podman), so 20 agents stay cheap on two cores. One story, one fleet:

- before any deployment `edgectl devices` prints `-` as the version, never `None`;
- with one device offline and --success-threshold 80% (default --offline skip), the plan names
  the offline device before anything is published, the device is not published to, and the
  rollout completes with exit 0 and "19 good, 1 offline" (its --json agrees);
- while a rollout runs (waiting, under --offline wait, for the offline device), a second rollout
  from another state file, and one from the same file, are refused before they publish, naming
  the running rollout; a plain `edgectl deploy` is refused the same way; a document of no rollout
  pushed past edgectl (an older tool) is refused by the device itself with rollout_in_flight,
  naming the rollout; the first rollout then ends "19 good, 1 failed" (the offline device, its
  last report named);
- a rollout whose document the devices refuse (signed by a key they do not trust) returns
  nobody, removes the refused documents from the broker and halts with exit 1: "2 refused";
- `edgectl rollout status` lists a SIGKILLed rollout as interrupted, not running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devinfra.procs import wait_until
from edge_shared.rollout_claim import claim_of_envelope
from tests.integration.desired.conftest import PASSPHRASE, REPO, edgectl
from tests.integration.fleet.conftest import Fleet

N = 20


def _views(fleet: Fleet) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with fleet.kit.fleet_client() as client:
            await client.watch(None)
            return {d: client.cached_view(d) for d in fleet.agents}

    return asyncio.run(read())


def _section(view: Any) -> dict[str, Any]:
    return dict((view.reported or {}).get("deployment") or {})


def _rid(stdout: str) -> str:
    return stdout.split("rollout ", 1)[1].split(":", 1)[0]


def test_rollouts_count_honestly_and_exclude_each_other(fleet: Fleet, tmp_path: Path) -> None:
    kit = fleet.kit
    run = kit.run
    devices = [f"{run}-d{i:02d}" for i in range(N)]
    for i, device in enumerate(devices):
        labels = {"fleet": run}
        if i in (0, 1):
            labels["grp"] = "pair"
        if i == N - 1:
            labels["grp"] = "away"
        fleet.add(device, labels)
    away = devices[-1]
    manifests = {}
    for name in ("a", "b", "c", "d", "e", "plain"):
        manifests[name] = tmp_path / f"{name}.json"
        manifests[name].write_text(json.dumps({"modules": {}}))
    fleet.start()
    key = str(kit.keys / "fleet.key")
    state, other_state = tmp_path / "rollouts.db", tmp_path / "elsewhere.db"

    def rollout(*args: str, db: Path = state, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return edgectl("rollout", *kit.flags(), "--state", str(db), *args, timeout=timeout)

    fleet.wait_all(lambda d, doc: (doc.get("device") or {}).get("labels") == fleet.labels[d], "labels reported")

    # ---- before any deployment: no "None" for a version
    listing = edgectl("devices", *kit.flags(), "--selector", f"fleet={run}")
    assert listing.returncode == 0, listing.stderr
    assert "None" not in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if line.startswith(devices[0]))
    assert row.split()[3] == "-" and row.split()[4] == "none", row

    # ---- one car goes away (a clean stop: its presence says offline)
    fleet.agents[away].stop()
    wait_until(lambda: _views(fleet)[away].presence == "offline", 30, f"{away} offline", interval=0.5)

    # ---- rollout A: 80% threshold, one device offline, --offline skip (the default)
    a = rollout(str(manifests["a"]), "--selector", f"fleet={run}", "--key", key, "--batches", "100%",
                "--max-parallel", "20", "--timeout", "60", "--success-threshold", "80%")
    assert a.returncode == 0, a.stdout + a.stderr
    rid_a = _rid(a.stdout)
    out = a.stdout
    plan_at = out.index(f"offline now: 1 device ({away}): not published to")
    assert plan_at < out.index("batch 1/1:") < out.index(f"{away}: OFFLINE: offline (last seen")
    assert out.rstrip().splitlines()[-1] == f"rollout {rid_a} COMPLETED: 19 good, 1 offline"
    assert "batch 1/1 passed its gate: 19/20 good, 1 offline" in out
    status_a = json.loads(rollout("status", rid_a, "--json").stdout)
    phases = {r["device"]: r["phase"] for r in status_a["devices"]}
    assert phases.pop(away) == "offline" and set(phases.values()) == {"reached"}
    assert status_a["counts"]["good"] == 19 and status_a["counts"]["offline"] == 1
    views = _views(fleet)
    assert views[away].desired_raw is None  # never published to
    claim = claim_of_envelope(views[devices[0]].desired_raw)
    assert claim is not None and claim.id == rid_a and claim.holds(time.time()) and not claim.forced

    # ---- rollout B (same state file: A finished, so its lease is taken over) waits for the
    # offline device (--offline wait); while it runs, nobody else may change its devices
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE}
    b_proc = subprocess.Popen(
        [sys.executable, "-m", "edgectl.cli", "rollout", *kit.flags(), "--state", str(state), str(manifests["b"]),
         "--selector", f"fleet={run}", "--key", key, "--batches", "100%", "--max-parallel", "20", "--timeout", "25",
         "--success-threshold", "80%", "--offline", "wait"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert b_proc.stdout is not None
    b_lines: list[str] = []
    try:
        for line in b_proc.stdout:
            b_lines.append(line)
            if f"{devices[0]}: version" in line and "good" in line:
                break
        head = "".join(b_lines)
        rid_b = _rid(head)
        assert f"offline now: 1 device ({away}): published to (retained for them) and waited for" in head, head
        before = _views(fleet)[devices[0]].desired_raw
        b_claim = claim_of_envelope(before)
        assert b_claim is not None and b_claim.id == rid_b and b_claim.forced  # took over A's lease: A is done

        for db in (other_state, state):
            c = rollout(str(manifests["c"]), "--selector", f"fleet={run}", "--key", key, "--batches", "100%", db=db)
            assert c.returncode == 1, c.stdout + c.stderr
            assert f"rollout {rid_b} holds 20 of the selected devices" in c.stderr, c.stderr
            assert "only one rollout at a time may change a device" in c.stderr and "--force" in c.stderr
        plain = kit.edgectl("deploy", *kit.flags(), devices[0], str(manifests["plain"]), "--key", key, "--wait", "30")
        assert plain.returncode == 1 and f"{devices[0]}: rollout {rid_b} holds it until" in plain.stderr, plain.stderr
        assert _views(fleet)[devices[0]].desired_raw == before  # nothing was published

        # an older tool (no claim, no check) reaches the device: the device itself refuses it
        document = tmp_path / "older-tool.json"
        highest = _section(_views(fleet)[devices[1]]).get("highestVersion") or 0
        document.write_text(json.dumps({"schema": 1, "version": highest + 1, "deployment": {"modules": {}}}))
        signed = edgectl("sign-document", str(document), "--key", key)
        assert signed.returncode == 0, signed.stderr

        async def push() -> None:
            async with kit.fleet_client() as client:
                await client.publish_desired_raw(devices[1], signed.stdout.encode())

        asyncio.run(push())

        def refused_by_device() -> bool:
            refusal = _section(_views(fleet)[devices[1]]).get("lastRefused") or {}
            return refusal.get("code") == "rollout_in_flight"

        wait_until(refused_by_device, 60, f"{devices[1]} refusing the older tool's document", interval=0.5)
        refusal = _section(_views(fleet)[devices[1]])["lastRefused"]
        assert f"rollout {rid_b} holds this device until" in refusal["description"]
        assert "a document of no rollout may not change it" in refusal["description"]
        assert refusal["version"] == highest + 1  # authenticated: the fleet's key signed it

        rest, _ = b_proc.communicate(timeout=180)
    finally:
        if b_proc.poll() is None:
            b_proc.kill()
            b_proc.wait()
    b_out = "".join(b_lines) + rest
    assert b_proc.returncode == 0, b_out
    assert f"rollout {rid_b} COMPLETED: 19 good, 1 failed" in b_out, b_out
    assert f"{away}: FAILED: version 1 not good within 25 s (last reported: not received yet (its last report: " \
           "no deployment)); the device is offline" in b_out, b_out
    after_b = _views(fleet)
    for d in devices[:-1]:
        section = _section(after_b[d])
        assert section["current"] == section["lastKnownGood"], (d, section)
    # (devices[1] still runs B's version: the older tool's document changed nothing)
    assert _section(after_b[devices[1]])["current"] == _section(after_b[devices[2]])["current"]

    # ---- rollout D: signed by a key the devices do not trust (B's lease still runs, but B finished
    # and is in the same state file: D takes it over without --force)
    versions_before = {d: _section(after_b[d])["current"] for d in devices[:2]}
    d_run = rollout(str(manifests["d"]), "--selector", "grp=pair", "--key", str(kit.keys / "stranger.key"),
                    "--batches", "100%", "--timeout", "60")
    assert d_run.returncode == 1, d_run.stdout + d_run.stderr
    rid_d = _rid(d_run.stdout)
    assert f"{devices[0]}: REFUSED: version" in d_run.stdout and "untrusted_key" in d_run.stdout
    assert "no device of it left its deployment: nothing to return" in d_run.stdout
    assert f"rollout {rid_d} HALTED: 2 refused" in d_run.stdout, d_run.stdout
    assert "returning to" not in d_run.stdout.split("failed its gate", 1)[1].split("\n", 1)[1]  # nothing after
    for d in devices[:2]:
        assert f"{d}: its refused version" in d_run.stdout and "removed from the broker" in d_run.stdout

    def cleared() -> bool:
        views = _views(fleet)
        return all(views[d].desired_raw is None for d in devices[:2])

    wait_until(cleared, 30, "the refused documents removed from the broker", interval=0.5)
    after_d = _views(fleet)
    assert {d: _section(after_d[d])["current"] for d in devices[:2]} == versions_before  # nothing changed
    for d in devices[:2]:  # the removal is not news to the device: the refusal the fleet reads stays
        assert _section(after_d[d])["lastRefused"]["code"] == "untrusted_key", _section(after_d[d])
    status_d = json.loads(rollout("status", rid_d, "--json").stdout)
    assert {r["phase"] for r in status_d["devices"]} == {"refused"}
    assert all(r["revertVersion"] is None for r in status_d["devices"])

    # ---- rollout E on the offline device only, SIGKILLed: listed as interrupted, not running
    e_proc = subprocess.Popen(
        [sys.executable, "-m", "edgectl.cli", "rollout", *kit.flags(), "--state", str(state), str(manifests["e"]),
         "--selector", "grp=away", "--key", key, "--timeout", "600", "--offline", "wait"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert e_proc.stdout is not None
    e_lines = []
    for line in e_proc.stdout:
        e_lines.append(line)
        if f"{away}: version" in line and "published" in line:
            break
    e_proc.send_signal(signal.SIGKILL)
    e_proc.wait()
    e_proc.stdout.close()
    rid_e = _rid("".join(e_lines))
    listed = rollout("status")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(rid_e))
    assert "running (interrupted)" in row, listed.stdout
    assert json.loads(rollout("status", "--json").stdout)[0]["interrupted"] is True
