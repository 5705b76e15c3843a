"""`edgectl dashboard` against three real agents (`edge-agent run`), a mutual-TLS mosquitto with
the ACL, the real registry with cosign-signed images and real podman, seen in Chromium:

- the fleet page lists the agents, online, with their labels;
- a deployment made with `edgectl deploy` shows on the open device page within 2 s of its
  publish, without a reload, and then the device's own verdict (good) arrives the same way;
- a rollout whose second batch fails (v2 crashes on rev-b hardware) shows live on its page:
  HALTED, the failed batch, each device's reason as the rollout state file holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.integration.dashboard.conftest import Screenshots
from tests.integration.desired.conftest import PASSPHRASE, REPO, edgectl
from tests.integration.fleet.conftest import Fleet
from tests.integration.fleet.test_rollout import CRASHES_ON_REV_B, GOOD

PUBLISH_TO_PAGE_S = 2.0


def _edgectl_popen(*args: str) -> subprocess.Popen[str]:
    # Unbuffered: each line reaches the test when edgectl prints it, not when it exits.
    return subprocess.Popen([sys.executable, "-m", "edgectl.cli", *args], cwd=REPO, text=True,
                            env={**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class BrokerWitness:
    """mosquitto_sub (line-buffered) on one topic, new messages only: the moment the broker
    delivered the next message there, as a subscriber sees it (the dashboard is another one)."""

    def __init__(self, port: int, tls: list[str], topic: str) -> None:
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", *tls,
             "-R", "-C", "1", "-d", "-t", topic, "-F", "DELIVERED %t"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.subscribed = threading.Event()
        self.delivered: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "SUBACK" in line:
                self.subscribed.set()
            if line.startswith("DELIVERED") and self.delivered is None:
                self.delivered = time.monotonic()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _rows(page: Any, selector: str) -> dict[str, str]:
    """data-device -> the row's text."""
    found: list[list[str]] = page.eval_on_selector_all(
        selector, "rows => rows.map(r => [r.dataset.device, r.innerText])")
    return dict((d, t) for d, t in found)


def test_fleet_page_deploy_and_a_failing_rollout_live_in_the_browser(
    fleet: Fleet, start_dashboard: Any, browser: Any, screenshots: Screenshots, tmp_path: Path,
) -> None:
    kit = fleet.kit
    run = kit.run
    devices = [f"{run}-d0-a", f"{run}-d1-b", f"{run}-d2-a"]
    for device in devices:
        fleet.add(device, {"fleet": run, "hw": "rev-b" if device.endswith("-b") else "rev-a"})
    manifests = {}
    for name, script in (("v1", GOOD), ("v2", CRASHES_ON_REV_B)):
        manifests[name] = tmp_path / f"{name}.json"
        ref = kit.image("app", name, signed=True, script=script)
        manifests[name].write_text(json.dumps({"modules": {"app": {"image": ref}}}))
    fleet.start()
    state = tmp_path / "rollouts.db"
    board = start_dashboard([*kit.flags(), "--state", str(state), "--attestation-dir", str(tmp_path / "enrolled")])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    key = str(kit.keys / "fleet.key")

    # ---- the fleet page lists the real agents, online, with their labels
    page.goto(board.url)
    page.wait_for_function(
        "ids => ids.every(id => { const r = document.querySelector(`tr[data-device='${id}']`); "
        "return r && r.innerText.includes('online') && r.innerText.includes('hw=rev-'); })",
        arg=devices, timeout=120_000,
    )
    rows = _rows(page, "#fleet-table tr[data-device]")
    assert set(devices) <= set(rows), rows
    for device in devices:
        assert f"fleet={run}" in rows[device] and ("hw=rev-b" if device.endswith("-b") else "hw=rev-a") in rows[device]
        assert "0.1.0" in rows[device]  # the agent version it reports
    # the label selector filters (server side, as edgectl devices --selector)
    page.goto(f"{board.url}?selector=hw%3Drev-b")
    page.wait_for_selector("#fleet-table")
    assert list(_rows(page, "#fleet-table tr[data-device]")) == [devices[1]]
    # a second tab keeps the whole fleet page open through everything below (live updates only)
    fleet_tab = browser.new_page(viewport={"width": 1400, "height": 900})
    fleet_tab.goto(board.url)
    fleet_tab.wait_for_function("() => document.getElementById('live-status').textContent === 'live'")
    fleet_tab.evaluate("window.__sameDocument = true")

    # ---- a deployment made with edgectl shows on the open device page within 2 s of its publish
    d0 = devices[0]
    page.goto(f"{board.url}device/{d0}")
    page.wait_for_function("() => document.getElementById('live-status').textContent === 'live'", timeout=30_000)
    page.evaluate("window.__sameDocument = true")
    witness = BrokerWitness(kit.broker.port, ["--cafile", str(kit.pki.ca), "--cert", str(kit.fleet.cert),
                                              "--key", str(kit.fleet.key)], f"{kit.prefix}/{d0}/desired")
    assert witness.subscribed.wait(30), "mosquitto_sub did not subscribe"
    deploy = _edgectl_popen("deploy", *kit.flags(), d0, str(manifests["v1"]), "--key", key,
                            "--wait", "120", "--until", "good")
    assert deploy.stdout is not None
    line = deploy.stdout.readline()  # printed once the broker acknowledged the publish (PUBACK)
    acknowledged = time.monotonic()
    assert "published desired version" in line, line + deploy.stdout.read()
    version = int(line.split()[-1])
    page.wait_for_function(
        f"() => document.getElementById('desired-version').textContent === '{version}'",
        timeout=PUBLISH_TO_PAGE_S * 1000,
    )
    shown = time.monotonic()
    # The publish: the earlier of edgectl's acknowledged line and the broker's delivery to another
    # subscriber (whichever the test saw first; the page has the whole budget from there).
    witness.proc.wait(30)
    witness.stop()
    published = min(acknowledged, witness.delivered or acknowledged)
    shown_after = shown - published
    assert shown_after <= PUBLISH_TO_PAGE_S, shown_after
    # then the device's own report of it arrives the same way: good, still the same document
    page.wait_for_function(
        f"() => document.getElementById('current-version').textContent === '{version}' && "
        f"(document.querySelector('#versions tr[data-version=\"{version}\"] .state') || {{}}).textContent === 'good'",
        timeout=120_000,
    )
    good_after = time.monotonic() - published
    assert page.evaluate("window.__sameDocument") is True
    assert deploy.wait(120) == 0, deploy.stdout.read()
    modules = page.inner_text("#modules")
    assert "app" in modules and "running" in modules
    screenshots.take(page, "device")
    print(f"deployment on the page {shown_after * 1000:.0f} ms after its publish; the device's 'good' "
          f"{good_after:.1f} s after")
    rest = edgectl("deploy", *kit.flags(), *devices[1:], str(manifests["v1"]), "--key", key, "--wait", "120",
                   "--until", "good", timeout=180)
    assert rest.returncode == 0, rest.stdout + rest.stderr

    # ---- a rollout whose second batch fails, watched on its page while it runs
    rollout = _edgectl_popen("rollout", *kit.flags(), "--state", str(state), str(manifests["v2"]),
                             "--selector", f"fleet={run}", "--key", key, "--batches", "1,100%",
                             "--timeout", "90")
    assert rollout.stdout is not None
    first = rollout.stdout.readline()
    assert first.split()[1:2] == ["rollout"], first + rollout.stdout.read()
    rollout_id = first.split()[2].rstrip(":")
    page.goto(f"{board.url}rollouts/{rollout_id}")
    page.wait_for_selector("#rollout-status")
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function("() => document.getElementById('rollout-status').textContent === 'HALTED'",
                           timeout=300_000)
    assert page.evaluate("window.__sameDocument") is True
    output = rollout.stdout.read()
    assert rollout.wait(60) == 1, output
    status = json.loads(edgectl("rollout", "status", rollout_id, "--json", "--state", str(state)).stdout)
    assert status["status"] == "halted" and status["batch"] == 2
    assert "HALTED at batch 2 of 2" in page.inner_text("#halt-reason")
    assert "FAILED its gate" in page.inner_text("#batch-2") and "FAILED" not in page.inner_text("#batch-1")
    shown = _rows(page, "table.rollout-devices tr[data-device]")
    for record in status["devices"]:
        text = shown[record["device"]]
        assert record["phase"] in text and record["reason"] in text, (record, text)
        if record["failedReason"]:
            assert record["failedReason"] in text, (record, text)
    crashed = next(r for r in status["devices"] if r["device"] == devices[1])
    assert "module_failed" in crashed["failedReason"] and "module_failed" in shown[devices[1]]
    assert page.locator("#rollout-reverted").count() == 1  # the failed batch was returned: marked
    screenshots.take(page, "rollout")

    page.goto(f"{board.url}rollouts")
    page.wait_for_selector("#rollouts")
    assert rollout_id in page.inner_text("#rollouts") and "HALTED" in page.inner_text("#rollouts")
    screenshots.take(page, "rollouts")
    # the fleet tab, never reloaded, shows what each device now runs: d0 v2 (its batch passed),
    # d1 and d2 the return to v1's deployment (the rollout's revert version), all good
    expected = {r["device"]: r["revertVersion"] or r["version"] for r in status["devices"]}
    fleet_tab.wait_for_function(
        "expected => Object.entries(expected).every(([id, v]) => { "
        "const r = document.querySelector(`tr[data-device='${id}']`); "
        "return r && r.cells[5].textContent.trim() === String(v) && r.cells[6].textContent.startsWith('good'); })",
        arg=expected, timeout=60_000,
    )
    assert fleet_tab.evaluate("window.__sameDocument") is True
    screenshots.take(fleet_tab, "fleet")
    fleet_tab.close()
    page.close()
