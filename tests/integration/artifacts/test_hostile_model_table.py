"""The hostile-model table: one real agent, registry, broker and pilot container (driving the
simulator, models delivered as signed OCI artifacts), and for every hostile or broken model
`edgectl deploy --until good` as an operator runs it. Each case must:

- end with exit code 1 and a reason the fleet sees that names the artifact or field;
- leave the pilot driving the good model through the whole attempt: in its own per-second stats
  records (received by an independent fleet subscriber) every second of the attempt names the
  good model, the loop missed no tick (late 0, stale 0, no fault or error), and the simulator
  counted no off-road step;
- leave the artifact store as it was (used bytes and listing): nothing of a refused model stays.

The artifact store is a tmpfs of its own (so its used bytes are exact and the disk-too-small case
can shrink it); the pilot runs under a memory limit and its simulator in lock step with the loop
(simulated time advances per frame), so off-road steps do not depend on the machine's speed. The
loop runs on the wall clock at LOOP_HZ: a load on the loop's thread shows as late ticks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edge_pilot.model import reference_frames

from devinfra.procs import wait_until
from devinfra.telemetry import Follower
from edge_shared.artifacts.format import (
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG_TYPE,
    ONNX_LAYER_TYPE,
    TITLE,
    BuiltArtifact,
    canonical_json,
    validate_metadata,
)
from edge_shared.trust.cosign import OCI_MANIFEST, Descriptor
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edgectl.push import push_artifact
from tests.integration.artifacts.conftest import push_pilot_image
from tests.integration.artifacts.test_model_delivery import PILOT, push_model
from tests.integration.desired.conftest import Device
from tests.pilot.hostile_models import brightness_quantile, nan_when_darker_than, padded, scaled

STREAM = "pilot.stats"
WAIT = "240"  # a net for a broken run only: every case ends within seconds
MB = 1024 * 1024
STORE_MB = 560  # the artifact store's tmpfs: holds the 500 MB model next to the good one
SMALL_STORE_MB = 64  # what it is shrunk to for the disk-too-small case
MIN_FREE_MB = 16
MEMORY_LIMIT = "384m"  # a 61 MB model needs about 342 MB to be checked and loaded, plus 32 MB kept for driving
BIG_BYTES = 500 * 1000 * 1000
# The loop's rate: a tick counts as missed when something holds the loop up for a whole period.
# At the shipped 20 Hz (50 ms) the shared test machine alone misses some (5 in one case at a load
# average of 21 on 2 cores); at 2 Hz only a real stall does (a 1.65 s model load on the loop's
# thread, the issue this guards against, misses 3; tests/pilot/test_model_switch.py uses the same).
LOOP_HZ = 2


@dataclass
class Row:
    case: str
    code: str
    reason: str
    exit: int
    seconds: float
    records: int
    fps_min: float
    frames: int
    late: int
    stale: int
    faults: int
    off_road: int
    store_before: int
    store_after: int


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """Host files the pilot mounts (its settings, its control folder), readable by its user."""
    path = Path(tempfile.mkdtemp(prefix="ea-hostile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pilot_settings(host: Path) -> Path:
    """The shipped settings with the simulator in lock step with the loop (a frame advances the
    world by one 20 Hz step), the loop at LOOP_HZ and telemetry sent each second; the pilot's own
    model checks as shipped."""
    settings = json.loads((PILOT / "config" / "sim.json").read_text())
    settings["loop"] = {**settings["loop"], "hz": LOOP_HZ}
    settings["source"] = {**settings["source"], "fps": LOOP_HZ}
    settings["actuator"] = {**settings["actuator"], "sim_clock": "lock_step", "sim_step_s": 0.05}
    # The table reads each attempt's records by their ts; holding them the shipped 10 s before
    # sending would only make every case wait that much longer for them.
    settings["telemetry"] = {**settings["telemetry"], "flush_s": 1.0}
    path = host / "pilot.json"
    path.write_text(json.dumps(settings))
    path.chmod(0o644)
    (host / "control").mkdir(mode=0o755)
    return path


def pilot_doc(device: Device, host: Path, image: str, model_ref: str, version: int, path: str = "/models") -> Path:
    spec = {
        "image": image,
        "args": ["drive", "--config", "/etc/edge-pilot/config.json", "--models", "/models/current",
                 "--allow-unsigned"],
        "network": "none",
        "resources": {"memory": MEMORY_LIMIT},
        "mounts": [{"source": str(host / "pilot.json"), "target": "/etc/edge-pilot/config.json"},
                   {"source": str(host / "control"), "target": "/control"}],
        "artifacts": [{"ref": model_ref, "path": path, "confirm": True}],
    }
    out = device.workdir / f"hostile-{version}.json"
    out.write_text(json.dumps({"modules": {"pilot": spec}}))
    return out


def model_folder(out: Path, note: str, onnx: bytes | None = None, link: Path | None = None) -> Path:
    """model.onnx (these bytes, or a hard link to `link`) and the shipped model.json with a note."""
    out.mkdir(parents=True)
    if link is not None:
        os.link(link, out / "model.onnx")
    else:
        assert onnx is not None
        (out / "model.onnx").write_bytes(onnx)
    meta = json.loads((PILOT / "models" / "model.json").read_text())
    meta["note"] = note
    (out / "model.json").write_text(json.dumps(meta))
    return out


def random_model(out: Path, size: int) -> Path:
    """`size` random bytes called model.onnx (written in chunks: never all in memory)."""
    out.mkdir(parents=True)
    with open(out / "model.onnx", "wb") as fh:
        left = size
        while left:
            chunk = min(left, 16 * MB)
            fh.write(os.urandom(chunk))
            left -= chunk
    return model_folder(out.parent / f"{out.name}-meta", "random bytes", link=out / "model.onnx")


def push_crafted(device: Device, tag: str, *, artifact_type: str = MODEL_ARTIFACT_TYPE,
                 layer_type: str = ONNX_LAYER_TYPE) -> str:
    """The shipped model in a manifest with another artifactType or layer media type, signed with
    the fleet's image key: only the named type is wrong."""
    onnx = (PILOT / "models" / "model.onnx").read_bytes()
    config = canonical_json(validate_metadata(json.loads((PILOT / "models" / "model.json").read_text()))
                            .model_dump(mode="json"))
    digest = "sha256:" + hashlib.sha256(onnx).hexdigest()
    layer = Descriptor(layer_type, digest, len(onnx), {TITLE: "model.onnx"})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": MODEL_CONFIG_TYPE, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": digest, "size": len(onnx),
                    "annotations": {TITLE: "model.onnx"}}],
    })
    ref = f"{device.registry.host}/dp/{device.run}-models/pilot:{tag}"
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({device.registry.host})))
    push_artifact(client, parse_reference(ref), BuiltArtifact(manifest, config, ((layer, onnx),)))
    out = device.edgectl("sign-image", ref, "--key", str(device.keys / "image.key"),
                         "--insecure-registry", device.registry.host)
    assert out.returncode == 0, out.stderr
    return ref


def store_used(store: Path) -> int:
    return shutil.disk_usage(store).used


def store_listing(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*"))


def listing_is(store: Path, expected: list[str]) -> Callable[[], bool]:
    return lambda: store_listing(store) == expected


def stats_after(follower: Follower, since: float) -> Callable[[], bool]:
    return lambda: any(float(r["ts"]) > since for r in stats(follower))


def stats(follower: Follower) -> list[dict[str, Any]]:
    return [r for r in follower.records() if r.get("stream") == STREAM and not r.get("duplicate")]


def short(reason: str, device: Device) -> str:
    """A reason as printed in the table: the registry and run prefix dropped, digests cut to 12."""
    reason = reason.replace(f"{device.registry.host}/dp/{device.run}-", "")
    return re.sub(r"sha256:([0-9a-f]{12})[0-9a-f]{52}", r"sha256:\1", reason)


def reason_for(reported: dict[str, Any], version: int) -> tuple[str, str]:
    """(code, description) the fleet sees for `version`: its status entry, or the refusal of its
    document when it was never admitted."""
    section = reported["deployment"]
    entry = section["versions"].get(str(version))
    if entry is not None:
        return str(entry.get("code")), str(entry.get("description"))
    last = section.get("lastRefused") or {}
    assert last.get("version") == version, (version, section)
    return str(last["code"]), str(last["description"])


def test_hostile_models_never_drive_and_leave_the_good_one_driving(
    device: Device, pilot_image: str, runtime_dir: Path, host_dir: Path, tmp_path: Path
) -> None:
    image = push_pilot_image(device, pilot_image)
    good = push_model(device, model_folder(tmp_path / "good", "good", (PILOT / "models" / "model.onnx").read_bytes()),
                      "good")
    good_sha = good["layer"].removeprefix("sha256:")
    pilot_settings(host_dir)

    store = device.agent.state_dir / "artifacts"
    store.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STORE_MB}m,mode=0755", "tmpfs", str(store)], check=True)
    follower: Follower | None = None
    try:
        config = device.config_text.replace(
            "[telemetry]\nenabled = false\n", f'[telemetry]\nruntime_dir = "{runtime_dir}"\n'
        ) + f'allowed_mount_roots = ["{host_dir}"]\n[state]\nmin_free_mb = {MIN_FREE_MB}\n'
        assert config.count("[deployment]") == 1 and config.index("[deployment]") < config.index("allowed_mount")
        device.agent.config_path.write_text(config)
        device.agent.start()
        follower = Follower(tmp_path / "fleet", device.broker.port, device.id, client_id=f"follow-{device.run}",
                            extra=device.fleet_identity()).start()
        version = 1
        out = device.deploy(pilot_doc(device, host_dir, image, good["ref"], version), "--wait", WAIT, "--until", "good")
        assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-4000:]
        wait_until(lambda: any(r["payload"].get("model") == good_sha[:16] for r in stats(follower)), 60,
                   "the pilot's stats naming the good model")
        running = device.containers()["pilot"]

        # ---- the hostile models, pushed and signed like any other
        frames = [f.image for f in reference_frames()]
        nan_model = push_model(device, model_folder(tmp_path / "nan", "nan",
                                                    nan_when_darker_than(brightness_quantile(frames, 0.2))), "nan")
        inf_model = push_model(device, model_folder(tmp_path / "inf", "inf", scaled(math.inf)), "inf")
        heavy = push_model(device, model_folder(tmp_path / "heavy", "heavy", padded(58)), "heavy")
        t = time.monotonic()
        big_folder = random_model(tmp_path / "big", BIG_BYTES)
        big = push_model(device, big_folder, "big")
        big_push_s = time.monotonic() - t
        # the same 500 MB layer under another manifest (the registry has the blob: nothing uploaded)
        too_big = push_model(device, model_folder(tmp_path / "big-again", "disk", link=big_folder / "model.onnx"),
                             "disk")
        other_type = push_crafted(device, "other-type", artifact_type="application/vnd.example.dataset.v1")
        text_plain = push_crafted(device, "text", layer_type="text/plain")

        def shrink_store() -> None:
            subprocess.run(["mount", "-o", f"remount,size={SMALL_STORE_MB}m", str(store)], check=True)

        # (case, model reference, artifact path, code, what the reason must name, before the deploy)
        cases: list[tuple[str, str, str, str, list[str], Callable[[], None] | None]] = [
            ("NaN on a fifth of the frames", nan_model["ref"], "/models", "artifact_refused",
             [nan_model["ref"], "self-test failed", "non-finite"], None),
            ("inf on every frame", inf_model["ref"], "/models", "artifact_refused",
             [inf_model["ref"], "self-test failed", "non-finite"], None),
            ("500 MB of random bytes", big["ref"], "/models", "artifact_refused",
             [big["ref"], "model.onnx is 477 MB, more than this pilot takes (models.max_model_mb 64 MB)"], None),
            (f"61 MB model, {MEMORY_LIMIT} module", heavy["ref"], "/models", "artifact_refused",
             [heavy["ref"], "MB) needs about", "free of its 384 MB memory limit"], None),
            ("another artifactType", other_type, "/models", "artifact_wrong_type",
             [other_type, "artifactType is 'application/vnd.example.dataset.v1'"], None),
            ("an image, not a model", image, "/models", "artifact_wrong_type",
             [image, "artifactType"], None),
            ("text/plain layer holding the ONNX", text_plain, "/models", "artifact_wrong_type",
             [text_plain, "layers[0] mediaType is 'text/plain'"], None),
            ("path //control", good["ref"], "//control", "artifact_path_refused",
             ["/control: overlaps the mount target /control"], None),
            ("path /control/sub", good["ref"], "/control/sub", "artifact_path_refused",
             ["/control/sub: overlaps the mount target /control"], None),
            ("path /run", good["ref"], "/run", "artifact_path_refused",
             ["/run: /run is not a place for artifacts"], None),
            ("path /tmp", good["ref"], "/tmp", "artifact_path_refused",
             ["/tmp: /tmp is not a place for artifacts"], None),
            ("path /models/../run/x", good["ref"], "/models/../run/x", "artifact_path_refused",
             ["/run/x: /run is not a place for artifacts"], None),
            (f"500 MB model, {SMALL_STORE_MB} MB store", too_big["ref"], "/models", "artifact_no_space",
             [too_big["ref"], f"cannot fit on the state filesystem ({SMALL_STORE_MB}.0 MB in all, "
                              f"state.min_free_mb={MIN_FREE_MB} kept free)"], shrink_store),
        ]
        rows: list[Row] = []
        for case, ref, path, code, names, before in cases:
            if before is not None:
                before()
            version += 1
            used_before, listing_before = store_used(store), store_listing(store)
            t0 = time.time()
            out = device.deploy(pilot_doc(device, host_dir, image, ref, version, path), "--wait", WAIT,
                                "--until", "good")
            t1 = time.time()
            context = f"{case}\n{out.stdout}{out.stderr}\n{device.agent.log()[-3000:]}"
            assert out.returncode == 1, context
            assert code in out.stdout + out.stderr, context
            got_code, description = reason_for(asyncio.run(device.reported()), version)
            assert got_code == code, (case, got_code, description)
            for name in names:
                assert name in description, (case, name, description)
            # Nothing of the refused model stays: the store is back where it was (a rolled-back
            # version's files go when the reconciler switches back, just after the verdict).
            wait_until(listing_is(store, listing_before), 60, f"{case}: the store's listing back to {listing_before}")
            used_after = store_used(store)
            assert used_after == used_before, (case, used_before, used_after)
            # The pilot's own stats: every second of the attempt, and the one after it.
            wait_until(stats_after(follower, t1 + 1.5), 60, f"{case}: {STREAM} records after the attempt")
            window = [r["payload"] for r in stats(follower) if t0 <= float(r["ts"]) <= t1 + 1.5]
            assert window, case
            assert all(p["model"] == good_sha[:16] and p["stopped"] is None and p["swaps"] == 0 for p in window), \
                (case, [(p["model"], p["stopped"], p["swaps"]) for p in window])
            totals = {k: sum(int(p[k]) for p in window) for k in ("frames", "late", "stale", "faults", "errors")}
            off_road = max(int(p["sim"]["off_road_steps"]) for p in window)
            rows.append(Row(case, got_code, description, out.returncode, round(t1 - t0, 1), len(window),
                            min(float(p["fps"]) for p in window), totals["frames"], totals["late"],
                            totals["stale"], totals["faults"] + totals["errors"], off_road, used_before, used_after))
            assert totals["frames"] > 0 and totals["late"] == 0 and totals["stale"] == 0, (case, totals)
            assert totals["faults"] == 0 and totals["errors"] == 0, (case, totals)
            assert off_road == 0, (case, window[-1]["sim"])
            assert device.containers()["pilot"] == running, f"{case}: the pilot container was re-created or restarted"
            reported = asyncio.run(device.reported())
            assert reported["modules"]["pilot"]["moduleReport"]["using"] == [good["layer"]], case
            assert reported["deployment"]["current"] == 1, (case, reported["deployment"]["current"])

        # The 500 MB model is downloaded (the agent cannot know the pilot's limit; the pilot
        # refuses it on its size, unread); the same layer on a store too small for it is refused
        # on the manifest's declared size, before any byte is fetched.
        log = device.agent.log()
        assert f"{big['digest']} downloaded for module pilot (" in log, log[-3000:]
        assert f"{too_big['digest']} downloaded" not in log, log[-3000:]
        print(f"\n500 MB model: pushed in {big_push_s:.1f} s, downloaded by the agent, refused by the pilot unread; "
              f"on the {SMALL_STORE_MB} MB store refused before download")
        print(f"{'case':38} {'code':22} {'exit':>4} {'s':>5} {'recs':>4} {'fps min':>7} {'frames':>6} {'late':>4} "
              f"{'stale':>5} {'fault':>5} {'offrd':>5} {'store before/after':>19}  reason")
        for r in rows:
            print(f"{r.case:38} {r.code:22} {r.exit:>4} {r.seconds:>5} {r.records:>4} {r.fps_min:>7} {r.frames:>6} "
                  f"{r.late:>4} {r.stale:>5} {r.faults:>5} {r.off_road:>5} {r.store_before:>9}/{r.store_after:<9}  "
                  f"{short(r.reason, device)}")
    finally:
        if follower is not None:
            follower.stop()
        device.agent.stop()
        device.cleanup()  # the pilot mounts the store: gone before the store is
        subprocess.run(["umount", "-l", str(store)], check=False)
