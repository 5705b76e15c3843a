"""Upgrade risk: a device whose committed deployment holds an artifact at a path this release
refuses (/tmp: older releases accepted it). The agent boots from that state (state.db and the
artifact tree as an older release left them) with the real broker, registry and podman, and:
it keeps running (no crash loop), reports the problem upstream naming the module, the artifact
and the path, logs it once (not on every reconcile pass), and keeps the module that can run
running and the one with the refused path untouched."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from devinfra.procs import wait_until
from edge_agent.store import STATE_DB_NAME
from tests.integration.artifacts.test_model_delivery import model_variant, push_model
from tests.integration.desired.conftest import SLEEP, Device

WAIT = "120"


def doc(device: Device, image: str, model_ref: str) -> Path:
    modules = {
        "app": {"image": image, **SLEEP, "network": "none", "artifacts": [{"ref": model_ref, "path": "/models"}]},
        "other": {"image": image, **SLEEP, "network": "none"},
    }
    out = device.workdir / "upgrade.json"
    out.write_text(json.dumps({"modules": modules}))
    return out


def as_an_older_release_left_it(state: Path) -> tuple[int, str]:
    """The committed deployment's artifact path made /tmp (what an older release accepted and
    stored), and the artifact's directory named as that release placed it. Returns the version
    and the pinned artifact reference."""
    with sqlite3.connect(state / STATE_DB_NAME) as db:
        rows = db.execute("SELECT slot, version, document FROM deployment_slots").fetchall()
        assert rows, "nothing committed"
        for slot, _version, text in rows:
            document = json.loads(text)
            artifact = document["modules"]["app"]["artifacts"][0]
            assert artifact["path"] == "/models"
            artifact["path"] = "/tmp"
            db.execute("UPDATE deployment_slots SET document = ? WHERE slot = ?",
                       (json.dumps(document, sort_keys=True), slot))
    (state / "artifacts" / "app" / "models").rename(state / "artifacts" / "app" / "tmp")
    return int(rows[0][1]), str(artifact["ref"])


def test_a_stored_artifact_path_this_release_refuses_is_reported_once_and_the_rest_keeps_running(
    device: Device, tmp_path: Path
) -> None:
    image = device.image("app", "1", signed=True)
    model = push_model(device, model_variant(tmp_path / "v1", "first"), "v1")
    device.agent.start()
    out = device.deploy(doc(device, image, model["ref"]), "--wait", WAIT, "--until", "good")
    assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-3000:]
    assert device.agent.stop() == 0
    version, pinned_ref = as_an_older_release_left_it(device.agent.state_dir)
    before = device.containers()
    assert set(before) == {"app", "other"}

    device.agent.start()
    problem = "/tmp: /tmp is not a place for artifacts"

    def reported_problem(reported: dict[str, Any]) -> bool:
        return problem in json.dumps(reported.get("modules", {}).get("app", {}))

    reported = asyncio.run(device.wait_reported(reported_problem, "the refused artifact path reported", 60))
    app = reported["modules"]["app"]
    text = json.dumps(app)
    assert pinned_ref in text and problem in text, app
    assert app["runtimeStatus"] == "unloadable" and reported["modules"]["other"]["runtimeStatus"] == "running", \
        reported["modules"]
    show = device.edgectl("show", *device.flags(), device.id)  # what the operator reads
    assert show.returncode == 0 and problem in show.stdout and "unloadable" in show.stdout, show.stdout + show.stderr
    # Passes go on (the reconciler polls every 5 s): several of them, and the agent stays up.
    started = time.time()
    wait_until(lambda: time.time() - started > 12, 20, "three reconcile periods")
    assert device.agent.proc is not None and device.agent.proc.alive(), device.agent.log()[-3000:]
    log = device.agent.log()
    assert "Traceback" not in log, log[-5000:]
    assert log.count(problem) == 1, log[-5000:]  # said once, not on every pass
    after = device.containers()
    assert after["other"] == before["other"], "the module that can run was touched"
    assert after["app"] == before["app"], "the module with the refused path was touched"
    # A new deployment from the fleet heals it (the version is the next one).
    out = device.deploy(doc(device, image, model["ref"]), "--wait", WAIT, "--until", "good")
    assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-3000:]
    assert f"version {version + 1} good" in out.stdout, out.stdout
    device.agent.signal(signal.SIGTERM)
