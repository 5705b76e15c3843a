"""scripts/model-pipeline end to end: a good model passes both gates, is pushed, signed and reaches
the pilot on the named device; a badly trained one stops at the first failing gate (held-out MAE;
with that gate relaxed, the closed-loop laps) and is neither pushed nor deployed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from tests.integration.artifacts.conftest import PILOT, push_pilot_image, start_agent_with_telemetry
from tests.integration.desired.conftest import PASSPHRASE, Device

REPO = Path(__file__).resolve().parents[3]


def pipeline(device: Device, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "EDGECTL_KEY_PASSWORD": PASSPHRASE,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [str(REPO / "scripts" / "model-pipeline"), *args],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO,
        env=env,
    )
    stages = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return out.returncode, stages, out.stdout + out.stderr


def tag_exists(device: Device, repo: str, tag: str) -> bool:
    url = f"http://{device.registry.host}/v2/{repo}/manifests/{tag}"
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    return requests.head(url, headers=headers, timeout=10).status_code == 200


def test_pipeline_gates_pushes_signs_and_deploys(
    device: Device, pilot_image: str, runtime_dir: Path, tmp_path: Path
) -> None:
    image_ref = push_pilot_image(device, pilot_image)
    start_agent_with_telemetry(device, runtime_dir)
    template = tmp_path / "deployment.json"
    template.write_text(
        json.dumps(
            {
                "modules": {
                    "pilot": {
                        "image": image_ref,
                        "network": "none",
                        "args": [
                            "drive",
                            "--config",
                            "/etc/edge-pilot/config.json",
                            "--models",
                            "/models/current",
                            "--allow-unsigned",
                        ],
                    }
                }
            }
        )
    )
    repo = f"dp/{device.run}-models/pilot"
    common = [
        "--key",
        str(device.keys / "image.key"),
        "--insecure-registry",
        device.registry.host,
        "--deployment",
        str(template),
        "--deploy-key",
        str(device.keys / "fleet.key"),
        "--wait",
        "240",
        "--heldout-frames",
        "300",
        device.id,
        "--",
        *device.flags(),
    ]

    # a good model (the shipped one): every stage passes and the pilot drives with it
    code, stages, text = pipeline(
        device, "--model", str(PILOT / "models"), "--ref", f"{device.registry.host}/{repo}:good", *common
    )
    assert code == 0, text + device.agent.log()[-3000:]
    assert [s["stage"] for s in stages] == ["model", "heldout", "laps", "push", "deploy"]
    assert all(s["ok"] for s in stages)
    laps = stages[2]
    assert laps["laps"] >= 3 and laps["off_road_frames"] == 0
    layer = stages[3]["layer"]

    def drives_with(reported: dict[str, Any]) -> bool:
        report = reported.get("modules", {}).get("pilot", {}).get("moduleReport") or {}
        return layer in report.get("using", [])

    asyncio.run(device.wait_reported(drives_with, "the pilot driving with the pipeline's model", 120))
    versions = asyncio.run(device.reported())["deployment"]["versions"]
    assert [v["state"] for v in versions.values()] == ["good"]

    # a badly trained model: stops at the held-out gate, nothing pushed or deployed
    code, stages, text = pipeline(
        device,
        "--train",
        str(tmp_path / "bad"),
        "--frames",
        "300",
        "--epochs",
        "1",
        "--seed",
        "11",
        "--ref",
        f"{device.registry.host}/{repo}:bad",
        *common,
    )
    assert code == 1, text
    assert [s["stage"] for s in stages] == ["model", "heldout"] and not stages[-1]["ok"], text
    assert "held-out steering MAE" in stages[-1]["reason"]
    assert not tag_exists(device, repo, "bad")

    # the same model with the accuracy gate relaxed: the simulator gate stops it
    code, stages, text = pipeline(
        device,
        "--model",
        str(tmp_path / "bad"),
        "--max-mae-angle",
        "5",
        "--ref",
        f"{device.registry.host}/{repo}:bad",
        *common,
    )
    assert code == 1, text
    assert [s["stage"] for s in stages] == ["model", "heldout", "laps"] and not stages[-1]["ok"], text
    assert "left the road" in stages[-1]["reason"] or "laps" in stages[-1]["reason"]
    assert not tag_exists(device, repo, "bad")
    reported = asyncio.run(device.reported())
    assert list(reported["deployment"]["versions"]) == ["1"]  # no new version reached the device
    assert drives_with(reported)
