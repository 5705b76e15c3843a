"""`edgectl compare` against real agents running the real pilot container (modules/pilot, built
with its own build-image.sh, pushed to the test registry and cosign-signed), driving the
simulator: four agents with labels ring=a / ring=b, a baseline deployment (v1, the pilot's shipped
settings, 20 Hz) to all four, then a candidate (v2: the same image with a mounted config that
drives at 10 Hz) to ring=b only. `edgectl compare --group A=ring=a --group B=ring=b` must show
columns A v1 and B v2 whose values are what the pilots sent: the test recomputes every value with
numpy from the records compare used, checks each of those records against an independent
`edgectl telemetry` follower of the same device (same id, same payload, same deployment version),
and checks the version attribution against what was deployed where. The PNG must exist with the
size the chart module computes and carry both groups' colours.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devinfra.agent import AgentProcess
from devinfra.pilot_image import ensure_pilot_image
from devinfra.pki import unique
from devinfra.podman import podman
from devinfra.telemetry import Follower
from tests.integration.desired.conftest import REPO
from tests.integration.fleet.conftest import Fleet

RECORDS_PER_GROUP = 16


@pytest.fixture(scope="module")
def pilot_image() -> str:
    return ensure_pilot_image()


def push_signed(fleet: Fleet, local: str) -> str:
    kit = fleet.kit
    ref = f"{kit.registry.host}/dp/{kit.run}-pilot:1.0"
    podman("push", "-q", "--tls-verify=false", local, ref)
    out = kit.edgectl("sign-image", ref, "--key", str(kit.keys / "image.key"), "--insecure-registry", kit.registry.host)
    assert out.returncode == 0, out.stderr
    return ref


def pilot_manifest(path: Path, image: str, config_dir: Path | None) -> Path:
    spec: dict[str, Any] = {
        "image": image,
        "restartPolicy": "always",
        "args": ["drive", "--config", "/etc/edge-pilot/config.json"],
        "network": "none",
    }
    if config_dir is not None:  # the candidate: the same image, its settings from a mounted file
        spec["args"] = ["drive", "--config", "/cfg/slow.json"]
        spec["mounts"] = [{"source": str(config_dir), "target": "/cfg", "readOnly": True}]
    path.write_text(json.dumps({"modules": {"pilot": spec}}))
    return path


def test_compare_two_label_groups_running_two_pilot_settings(tmp_path: Path, fleet: Fleet, pilot_image: str) -> None:
    kit = fleet.kit
    short = Path(tempfile.mkdtemp(prefix="cmp-", dir="/tmp"))  # AF_UNIX paths must stay short
    short.chmod(0o755)
    config_dir = short / "cfg"
    config_dir.mkdir(mode=0o755)
    settings = json.loads((REPO / "modules/pilot/config/sim.json").read_text())
    settings["loop"]["hz"] = 10
    settings["source"]["fps"] = 10
    (config_dir / "slow.json").write_text(json.dumps(settings))
    (config_dir / "slow.json").chmod(0o644)
    groups = {"A": [f"cmp-a{i}-{kit.run}" for i in (1, 2)], "B": [f"cmp-b{i}-{kit.run}" for i in (1, 2)]}
    followers: dict[str, Follower] = {}
    try:
        for name, devices in groups.items():
            for device in devices:
                text = kit.agent_config(device, {"ring": name.lower()}).replace(
                    "[telemetry]\nenabled = false\n",
                    f'[telemetry]\nruntime_dir = "{short / device}"\nmodules = ["pilot"]\n',
                )
                text += f'allowed_mount_roots = ["{config_dir}"]\n'  # [deployment] is the last table
                fleet.agents[device] = AgentProcess(tmp_path / device, text, env={"PYTHONPATH": str(REPO)})
                follower = Follower(tmp_path / f"follow-{device}", kit.broker.port, device, client_id=unique("f"),
                                    extra=kit.fleet_identity())
                followers[device] = follower.start()
        fleet.start()
        image = push_signed(fleet, pilot_image)
        everyone = [d for devices in groups.values() for d in devices]
        baseline = pilot_manifest(tmp_path / "baseline.json", image, None)
        candidate = pilot_manifest(tmp_path / "candidate.json", image, config_dir)
        key = ["--key", str(kit.keys / "fleet.key")]
        out = kit.edgectl(
            "deploy", *kit.flags(), *everyone, str(baseline), *key, "--wait", "240", "--until", "running", timeout=300
        )
        assert out.returncode == 0, out.stdout + out.stderr
        out = kit.edgectl(
            "deploy",
            *kit.flags(),
            *groups["B"],
            str(candidate),
            *key,
            "--wait",
            "240",
            "--until",
            "running",
            timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr

        png = tmp_path / "out" / "compare.png"
        saved = tmp_path / "records.jsonl"
        result = kit.edgectl(
            "compare",
            *kit.flags(),
            "--group",
            "A=ring=a",
            "--group",
            "B=ring=b",
            "--metric",
            "latency",
            "--metric",
            "fps",
            "--metric",
            "cte",
            "--metric",
            "stops",
            "--records",
            str(RECORDS_PER_GROUP),
            "--duration",
            "180",
            "--json",
            "--png",
            str(png),
            "--save-records",
            str(saved),
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        table = kit.edgectl(
            "compare",
            *kit.flags(),
            "-g",
            "A=ring=a",
            "-g",
            "B=ring=b",
            "--records",
            "4",
            "--duration",
            "120",
            timeout=180,
        )
        assert table.returncode == 0, table.stdout + table.stderr
        print("\n" + table.stdout)

        records = [json.loads(line) for line in saved.read_text().splitlines()]
        group_of = {d: name for name, devices in groups.items() for d in devices}
        assert {r["device"] for r in records} == set(group_of)

        # Every record compare used is one a device really sent: an independent follower of the
        # same device received it with the same payload and deployment version.
        for device, follower in followers.items():
            mine = {r["id"]: r for r in records if r["device"] == device}
            follower.wait_for_ids(set(mine), 60)
            theirs = {r["id"]: r for r in follower.records() if not r.get("duplicate")}
            for rid, r in mine.items():
                assert (theirs[rid]["payload"], theirs[rid].get("deployment")) == (r["payload"], r["deployment"])
        # Attribution: ring=a only ever ran v1; on ring=b, v1 records come before v2 records.
        assert {r["deployment"] for r in records if group_of[r["device"]] == "A"} == {1}
        for device in groups["B"]:
            seqs = {v: [r["seq"] for r in records if r["device"] == device and r["deployment"] == v] for v in (1, 2)}
            assert seqs[2], f"{device}: no v2 record"
            assert not seqs[1] or max(seqs[1]) < min(seqs[2])

        # The table's values, recomputed with numpy from the same records.
        columns = [(c["group"], c["version"]) for c in doc["columns"]]
        assert ("A", 1) in columns and ("B", 2) in columns, columns
        by_label = {row["label"]: row["values"] for row in doc["rows"]}
        assert list(by_label) == [
            "latency p50 ms",
            "latency p95 ms",
            "latency p99 ms",
            "fps mean",
            "cte mean m",
            "cte p95 m",
            "stops",
            "stopped records",
        ]
        for index, (group, version) in enumerate(columns):
            cell = [r for r in records if group_of[r["device"]] == group and r["deployment"] == version]
            assert doc["columns"][index]["records"] == len(cell)
            frames = [v for r in cell for v in r["payload"].get("total_ms", [])]
            for p in (50, 95, 99):
                assert by_label[f"latency p{p} ms"][index] == pytest.approx(np.percentile(frames, p))
            assert by_label["fps mean"][index] == pytest.approx(np.mean([r["payload"]["fps"] for r in cell]))
            cte = [abs(r["payload"]["sim"]["cte_m"]) for r in cell]
            assert by_label["cte mean m"][index] == pytest.approx(np.mean(cte))
            assert by_label["cte p95 m"][index] == pytest.approx(np.percentile(cte, 95))
            assert by_label["stopped records"][index] == sum(1 for r in cell if r["payload"].get("stopped"))
        # The two settings really differ: the candidate drives at half the rate (20 Hz against 10;
        # a loaded machine makes the 20 Hz pilot skip late ticks first, seen down to 17.7 fps).
        a1, b2 = columns.index(("A", 1)), columns.index(("B", 2))
        assert by_label["fps mean"][a1] > 1.3 * by_label["fps mean"][b2], by_label["fps mean"]
        assert 6 <= by_label["fps mean"][b2] <= 11

        # The picture.
        import cv2

        from edgectl.compare import Column, Comparison, Row
        from edgectl.compare_chart import PALETTE, chart_size

        img = cv2.imread(str(png))
        assert img is not None, png
        shape = Comparison(
            tuple(Column(c["group"], c["version"], tuple(c["devices"]), c["records"]) for c in doc["columns"]),
            tuple(Row(r["metric"], r["label"], tuple(r["values"])) for r in doc["rows"]),
        )
        assert doc["png"] == {"path": str(png), "width": img.shape[1], "height": img.shape[0]}
        assert (img.shape[1], img.shape[0]) == chart_size(shape)
        for colour in PALETTE[:2]:
            assert int(np.all(img == np.array(colour, np.uint8), axis=2).sum()) > 500
        keep = os.environ.get("EDGE_COMPARE_KEEP")  # to refresh the example in docs/ by hand
        if keep:
            shutil.copy(png, keep)
            Path(keep).with_suffix(".txt").write_text(table.stdout)
        print(f"picture: {png} ({img.shape[1]}x{img.shape[0]})")
    finally:
        for follower in followers.values():
            follower.stop()
        fleet.stop()
        shutil.rmtree(short, ignore_errors=True)
