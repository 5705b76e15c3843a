"""`edgectl rollout` against devices that are offline (their retained reported state and an offline
presence on a real mosquitto, as a car that went away leaves them): Ctrl-C stops it with exit 130
and a resume hint, status says INTERRUPTED, and the resumed rollout fails the gate on the timeout
(naming the last report and the offline presence), returns the batch (to the empty deployment:
they ran none) and halts with exit 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devinfra.mosquitto import Mosquitto
from devinfra.pki import unique
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient
from tests.integration.desired.conftest import PASSPHRASE, REPO, edgectl


async def _publish_offline_devices(section: MqttSection, prefix: str, devices: list[str]) -> None:
    async with FleetClient(broker_params(section, unique("setup")), prefix) as fleet:
        for d in devices:
            reported = {"schema": 1, "deviceId": d, "ts": time.time() - 3600, "device": {"labels": {"site": "x"}},
                        "deployment": {"current": None, "lastKnownGood": None, "highestVersion": None,
                                       "versions": {}, "lastRefused": None, "maxDocumentBytes": 1048576,
                                       "documentMode": "enforce"}}
            await fleet.client.publish_checked(f"{prefix}/{d}/reported", json.dumps(reported).encode(), 1, True)
            await fleet.client.publish_checked(f"{prefix}/{d}/presence", b'{"schema":1,"status":"offline"}', 1, True)


async def _retained_desired(section: MqttSection, prefix: str, device: str) -> dict[str, object]:
    async with FleetClient(broker_params(section, unique("check")), prefix) as fleet:
        view = await fleet.view(device)
    return view.desired or {}


async def test_ctrl_c_then_resume_times_out_offline_devices_and_returns_them(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    prefix = unique("off")
    section = MqttSection(host="127.0.0.1", port=mosquitto.port, topic_prefix=prefix)
    devices = [f"car-{i}" for i in range(3)]
    await _publish_offline_devices(section, prefix, devices)
    keys = tmp_path / "keys"
    keys.mkdir()
    assert edgectl("keygen", "--output-key-prefix", str(keys / "fleet")).returncode == 0
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"modules": {"app": {"image": "registry.local/app:2"}}}))
    flags = ["--broker", "127.0.0.1", "--port", str(mosquitto.port), "--prefix", prefix,
             "--state", str(tmp_path / "rollouts.db")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgectl.cli", "rollout", *flags, str(manifest), "--selector", "site=x",
         "--key", str(keys / "fleet.key"), "--batches", "2", "--max-parallel", "1", "--timeout", "3"],
        cwd=REPO, env={**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "car-0: version 1 published" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=20)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    rid = output.split("rollout ", 1)[1].split(":", 1)[0]
    assert f"interrupted; continue with: edgectl rollout --resume {rid}" in output
    assert "3 devices in 2 batches (2+1)" in output
    status = edgectl("rollout", "status", rid, *flags[-2:])
    assert status.returncode == 3 and "INTERRUPTED" in status.stdout, status.stdout
    assert "car-0  updating          version 1 published" in status.stdout
    assert "car-1  waiting" in status.stdout  # --max-parallel 1: not published yet

    time.sleep(3.5)  # car-0's timeout passes while nobody runs the rollout
    resumed = edgectl("rollout", *flags, "--resume", rid, timeout=60)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    out = resumed.stdout
    assert ("car-0: FAILED: version 1 not good within 3 s (last reported: not reported yet); "
            "the device is offline") in out
    assert "batch 1 of 2 failed its gate: 0/2 good, 1 failed, 1 pending" in out
    assert "car-0: NOT RETURNED: version 2 not good within 3 s" in out  # offline: cannot confirm the return
    assert f"rollout {rid} HALTED" in out
    assert "car-1  skipped           not published: its batch failed first" in out
    assert "car-2  waiting" in out
    # the retained document is the return: version 2, the empty deployment car-0 ran before
    desired = await _retained_desired(section, prefix, "car-0")
    assert desired["version"] == 2 and desired["deployment"] == {"modules": {}}
    assert (await _retained_desired(section, prefix, "car-1")) == {}
    final = edgectl("rollout", "status", rid, *flags[-2:])
    assert final.returncode == 1 and f"rollout {rid}: HALTED at batch 1 of 2" in final.stdout
    again = edgectl("rollout", *flags, "--resume", rid)
    assert again.returncode == 1 and "already halted; nothing to resume" in again.stdout
