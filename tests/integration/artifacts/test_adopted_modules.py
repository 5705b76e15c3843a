"""An agent restart (SIGTERM, then kill -9) under the real pilot, which streams telemetry and
confirms its model on the ingest socket: the adopted pilot gets its socket back, its records keep
reaching an independent fleet subscriber within seconds, and a model deployed afterwards is
confirmed by the pilot (before the fix, the socket came back only for containers the agent
created or started, and every later confirmed deployment failed `artifact_not_confirmed`)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from devinfra.procs import wait_until
from devinfra.telemetry import Follower
from tests.integration.artifacts.conftest import push_pilot_image, start_agent_with_telemetry
from tests.integration.artifacts.test_model_delivery import (
    WAIT,
    container,
    deployment,
    model_variant,
    push_model,
    wait_for_use,
)
from tests.integration.desired.conftest import Device

STREAM = "pilot.stats"  # the pilot's stats, once a second (modules/pilot/config/sim.json)


def stats_since(follower: Follower, since: float) -> list[dict[str, object]]:
    return [r for r in follower.records()
            if r.get("stream") == STREAM and not r.get("duplicate") and float(r["ts"]) > since]  # type: ignore[arg-type]


def test_adopted_pilot_keeps_streaming_and_confirms_models_after_agent_restarts(
    device: Device, pilot_image: str, runtime_dir: Path, tmp_path: Path
) -> None:
    image_ref = push_pilot_image(device, pilot_image)
    v1 = push_model(device, model_variant(tmp_path / "v1", "first"), "v1")
    start_agent_with_telemetry(device, runtime_dir)
    follower = Follower(tmp_path / "fleet", device.broker.port, device.id, client_id=f"follow-{device.run}",
                        extra=device.fleet_identity()).start()
    try:
        out = device.deploy(deployment(device, image_ref, v1["ref"], 1), "--wait", WAIT, "--until", "good")
        assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-4000:]
        wait_for_use(device, v1["layer"])
        first = container(device)
        start = time.time()
        wait_until(lambda: len(stats_since(follower, start)) >= 2, 60, f"{STREAM} records before any restart")

        for how in ("SIGTERM", "SIGKILL"):
            if how == "SIGTERM":
                device.agent.signal(signal.SIGTERM)
                assert device.agent.proc is not None and device.agent.proc.proc is not None
                assert device.agent.proc.proc.wait(30) == 0, device.agent.log()[-3000:]
            else:
                device.agent.kill()
            device.agent.start()
            restarted = time.time()
            # Condition waits: the pilot reconnects when its socket is back (it polls), the
            # uplink sends within its batching delay. "Seconds" on an idle machine; the bound
            # only keeps a broken run from hanging.
            wait_until(lambda since=restarted: len(stats_since(follower, since)) >= 3, 60,
                       f"{STREAM} records after the agent's {how} restart\n{device.agent.log()[-3000:]}")
            assert container(device) == first, f"the {how} restart re-created or restarted the pilot"

        # A model deployed after the restarts is confirmed by the pilot (it reports on the socket).
        v2 = push_model(device, model_variant(tmp_path / "v2", "second"), "v2")
        out = device.deploy(deployment(device, image_ref, v2["ref"], 2), "--wait", WAIT, "--until", "good")
        assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-4000:]
        state = wait_for_use(device, v2["layer"])
        assert state["artifacts"]["/models"]["module"] == "confirmed", state
        assert container(device) == first
    finally:
        follower.stop()
