"""`edgectl rollout` against 21 real agents (one outside the selector), one mosquitto with mutual
TLS and the ACL, the real registry with cosign-signed images, and real podman.

The story: v1 rolled out to all 20 selected devices; v2 needs a sensor the rev-b hardware lacks
(its container exits at once there), rolled out in 3 batches: batch 1 (a rev-a car) passes,
batch 2 holds rev-b cars whose devices roll back on their own, the gate fails, the rollout halts
and returns batch 2 to v1's deployment as a new signed version, and batch 3 is never touched;
`edgectl rollout status` explains it with each device's own reason. Then v3 (good) is rolled out,
the edgectl running it is SIGKILLed in batch 2, and `edgectl rollout --resume` completes it
without publishing any version twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.desired.conftest import PASSPHRASE, REPO, edgectl
from tests.integration.fleet.conftest import Fleet

GOOD = "trap 'exit 0' TERM\nwhile true; do sleep 1; done\n"
# v2 needs a sensor that rev-b cars lack: on them (container name <device>-app, device ids end in -b)
# it exits at once, every time podman restarts it.
CRASHES_ON_REV_B = (
    'case "$(hostname)" in *-b-app) echo "v2: no lidar on this hardware revision" >&2; exit 3;; esac\n' + GOOD
)
N = 20
REV_B = {5, 6, 7, 8, 9, 15, 16, 17, 18, 19}  # half of batch 2 and half of batch 3


def _section(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc.get("deployment") or {})


def _state(doc: dict[str, Any], version: Any) -> str | None:
    entry = (_section(doc).get("versions") or {}).get(str(version)) or {}
    return entry.get("state")


def _current_good(doc: dict[str, Any]) -> bool:
    current = _section(doc).get("current")
    return current is not None and _state(doc, current) == "good"


def _pinned(ref: str) -> str:
    """repository@digest of a tag in the test registry (what the agent runs: the pinned digest)."""
    import urllib.request

    host, _, rest = ref.partition("/")
    name, _, tag = rest.rpartition(":")
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    })
    with urllib.request.urlopen(request, timeout=10) as answer:
        return f"{host}/{name}@{answer.headers['Docker-Content-Digest']}"


def _image(fleet: Fleet, device: str) -> str:
    """The image of the device's app container, from podman itself."""
    from devinfra.podman import podman

    out = podman("inspect", "--format", "{{.ImageName}}", f"{device}-app", check=False)
    return out.stdout.strip()


def test_staged_rollout_halts_returns_the_failed_batch_and_resumes_after_sigkill(fleet: Fleet, tmp_path: Path) -> None:
    started = time.monotonic()
    kit = fleet.kit
    run = kit.run
    devices = [f"{run}-d{i:02d}-{'b' if i in REV_B else 'a'}" for i in range(N)]
    for i, device in enumerate(devices):
        fleet.add(device, {"fleet": run, "hw": "rev-b" if i in REV_B else "rev-a"})
    outsider = f"{run}-x00-a"
    fleet.add(outsider, {"fleet": f"{run}-other", "hw": "rev-a"})
    refs = {
        "v1": kit.image("app", "v1", signed=True, script=GOOD),
        "v2": kit.image("app", "v2", signed=True, script=CRASHES_ON_REV_B),
        "v3": kit.image("app", "v3", signed=True, script=GOOD),
    }
    manifests = {}
    for name, ref in refs.items():
        manifests[name] = tmp_path / f"{name}.json"
        manifests[name].write_text(json.dumps({"modules": {"app": {"image": ref}}}))
    v1, v2, v3 = (_pinned(refs[n]) for n in ("v1", "v2", "v3"))
    fleet.start()
    t_agents = time.monotonic() - started
    state = tmp_path / "rollouts.db"
    key = str(kit.keys / "fleet.key")
    select = f"fleet={run}"

    def rollout(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return edgectl("rollout", *kit.flags(), "--state", str(state), *args, timeout=timeout)

    # ---- labels are reported; the selector picks the 20, with their state
    fleet.wait_all(lambda d, doc: (doc.get("device") or {}).get("labels") == fleet.labels[d], "labels reported")
    listing = edgectl("devices", *kit.flags(), "--selector", f"{select},hw=rev-b", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert sorted(r["device"] for r in rows) == sorted(d for i, d in enumerate(devices) if i in REV_B)
    assert all(r["currentVersion"] is None and r["deploymentState"] == "none" for r in rows)
    bad = edgectl("devices", *kit.flags(), "--selector", "fleet==x")
    assert bad.returncode == 2 and "'==' is not a selector operator" in bad.stderr

    # ---- rollout A: v1 everywhere, one batch
    a = rollout(str(manifests["v1"]), "--selector", select, "--key", key, "--batches", "100%",
                "--max-parallel", "20", "--timeout", "120")
    assert a.returncode == 0, a.stdout + a.stderr
    assert "COMPLETED: 20 devices good" in a.stdout
    t_a = time.monotonic() - started
    after_a = fleet.reported()
    assert all(_current_good(after_a[d]) for d in devices), {d: _section(after_a[d]) for d in devices}
    assert _section(after_a[outsider]).get("current") is None  # not selected: never touched
    base = {d: _section(after_a[d])["current"] for d in devices}

    # ---- rollout B: v2 in 3 batches; batch 2 holds rev-b cars
    b = rollout(str(manifests["v2"]), "--selector", select, "--key", key, "--batches", "1,50%,100%",
                "--max-parallel", "10", "--timeout", "90")
    assert b.returncode == 1, b.stdout + b.stderr
    rid_b = b.stdout.split("rollout ", 1)[1].split(":", 1)[0]
    assert "batch 1/3 passed its gate: 1/1 good" in b.stdout
    assert "batch 2 of 3 failed its gate" in b.stdout and f"rollout {rid_b} HALTED" in b.stdout
    t_b = time.monotonic() - started
    after_b = fleet.reported()
    batch1, batch2, batch3 = devices[:1], devices[1:10], devices[10:]
    status_b = json.loads(rollout("status", rid_b, "--json").stdout)
    records = {r["device"]: r for r in status_b["devices"]}
    assert status_b["status"] == "halted" and status_b["batch"] == 2
    # batch 1 keeps v2, good
    for d in batch1:
        assert records[d]["phase"] == "reached" and _current_good(after_b[d])
        assert _section(after_b[d])["current"] == records[d]["version"] and _image(fleet, d) == v2
    # batch 2: every device returned to v1's deployment as a NEW version above the rollout's
    rolled_back: list[str] = []
    for d in batch2:
        rec = records[d]
        assert rec["phase"] == "reverted", rec
        assert rec["previous"] == base[d] and rec["revertVersion"] > rec["version"] > base[d]
        assert _section(after_b[d])["current"] == rec["revertVersion"] and _current_good(after_b[d])
        assert _image(fleet, d) == v1
        # the record carries the device's own report on the rollout's version: it rolled back
        # (rev-b), was good, or was still on probation when the gate failed (then our return
        # superseded it)
        entry = _section(after_b[d])["versions"][str(rec["version"])]
        if entry["state"] == "rolled_back":
            assert d.endswith("-b") and entry["code"] == "module_failed" and entry["module"] == "app"
            assert rec["failedReason"].startswith(f"version {rec['version']} rolled_back: module_failed: module app")
            assert entry["description"] in rec["failedReason"]
            rolled_back.append(d)
        elif entry["state"] == "good":
            assert rec["failedReason"] in (
                f"version {rec['version']} reached the target, returned with its batch",
                f"version {rec['version']} good (after its batch failed), returned with its batch",
            )
        else:
            assert entry["state"] == "superseded", entry
            assert rec["failedReason"] == f"version {rec['version']} had not settled when its batch failed"
    assert rolled_back, "no device of batch 2 reported the crash"
    # batch 3 never changed: no version above rollout A's, still v1
    for d in batch3:
        assert records[d]["phase"] == "waiting" and records[d]["version"] is None
        assert _section(after_b[d])["current"] == base[d] and _section(after_b[d])["highestVersion"] == base[d]
        assert _image(fleet, d) == v1
    text = rollout("status", rid_b)
    assert text.returncode == 1
    assert f"rollout {rid_b}: HALTED at batch 2 of 3" in text.stdout
    assert "batch 3 (10 devices): not started: never changed" in text.stdout
    assert "9 of 9 devices of batch 2 returned to their previous deployment" in text.stdout
    assert "rolled_back: module_failed: module app" in text.stdout
    print(text.stdout)
    listing = edgectl("devices", *kit.flags(), "--selector", f"{select},hw=rev-b")
    assert listing.returncode == 0 and listing.stdout.count(" good") == len(REV_B), listing.stdout

    # ---- rollout C: v3 (good); the edgectl running it is SIGKILLed in batch 2, then resumed
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE}
    before_c = {d: _section(after_b[d])["highestVersion"] for d in devices}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgectl.cli", "rollout", *kit.flags(), "--state", str(state),
         str(manifests["v3"]), "--selector", select, "--key", key, "--batches", "1,50%,100%",
         "--max-parallel", "4", "--timeout", "90"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            seen.append(line)
            if "version" in line and "published" in line and any(f"{d}:" in line for d in batch2):
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    killed_output = "".join(seen)
    assert "batch 1/3 passed its gate" in killed_output, killed_output
    rid_c = killed_output.split("rollout ", 1)[1].split(":", 1)[0]
    interrupted = rollout("status", rid_c)
    assert interrupted.returncode == 3 and "INTERRUPTED" in interrupted.stdout, interrupted.stdout
    assert f"edgectl rollout --resume {rid_c}" in interrupted.stdout
    resumed = rollout("--resume", rid_c)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming rollout {rid_c} (batch 2/3" in resumed.stdout
    assert f"rollout {rid_c} COMPLETED: 20 devices good" in resumed.stdout
    t_c = time.monotonic() - started
    after_c = fleet.reported()
    status_c = json.loads(rollout("status", rid_c, "--json").stdout)
    for rec in status_c["devices"]:
        d = rec["device"]
        assert rec["phase"] == "reached" and _current_good(after_c[d])
        assert _section(after_c[d])["current"] == rec["version"] and _image(fleet, d) == v3
        # exactly one new version per device: the resume published the stored bytes again, never a second one
        assert _section(after_c[d])["highestVersion"] == before_c[d] + 1 == rec["version"]
    assert _section(after_c[outsider]).get("current") is None
    assert rollout("status", rid_c).returncode == 0
    listing = rollout("status")
    assert listing.returncode == 0 and rid_b in listing.stdout and rid_c in listing.stdout
    print(f"timings: {N + 1} agents up at {t_agents:.0f} s; rollout A done at {t_a:.0f} s, B at {t_b:.0f} s, "
          f"C (killed, resumed) at {t_c:.0f} s")
