"""Artifacts through the desired-state room and the reconciler (in-memory runtime, fake registry,
hand-driven clock): a new model is switched under the running container, the deployment waits for
the module's confirmation, a refusal rolls back to the previous model, an untrusted or corrupted
artifact rejects the version before anything changes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from devinfra.pipeline import Pipeline
from edge_agent.artifacts.placement import ArtifactDirs
from edge_agent.config import parse_config
from edge_agent.desired.admission import DocumentTrust
from edge_agent.reported import ReportedState
from edge_agent.store import open_state_db
from edge_shared.protocol import desired_document
from edge_shared.trust.api import ImageRejected, VerifiedImage
from tests.fakes.runtime import FakeRuntime
from tests.unit.artifacts.test_placement import FakeRegistry

IMAGE = "reg.local:5000/pilot:1"
CONFIG = """
[device]
id = "unit-dev"
[deployment]
stabilisation_window_s = 30
apply_timeout_s = 300
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TagVerifier:
    """Images: digest of the reference; artifacts: the fake registry's tags. 'stranger' is unsigned."""

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags

    async def verify(self, reference: str) -> VerifiedImage:
        repo = reference.rsplit(":", 1)[0]
        if "stranger" in reference:
            raise ImageRejected(reference, "untrusted_key", "signed by an unknown key")
        digest = self.tags.get(reference) or "sha256:" + hashlib.sha256(reference.encode()).hexdigest()
        return VerifiedImage(reference, repo, digest, "enforce", "key")


def setup(tmp_path: Path) -> tuple[Pipeline, FakeRuntime, Clock, FakeRegistry, dict[str, str]]:
    clock = Clock()
    runtime = FakeRuntime(clock=clock)
    runtime.registry.add(f"reg.local:5000/pilot@sha256:{hashlib.sha256(IMAGE.encode()).hexdigest()}")
    registry = FakeRegistry()
    tags = {f"reg.local:5000/m:{name}": registry.add(name.encode() * 100) for name in ("v1", "v2", "v3", "stranger")}
    dirs = ArtifactDirs(tmp_path / "artifacts", registry)  # type: ignore[arg-type]
    pipe = Pipeline(
        parse_config(CONFIG),
        open_state_db(tmp_path / "state"),
        ReportedState(),
        runtime,
        TagVerifier(tags),
        clock=clock,
        artifacts=dirs,
    )
    return pipe, runtime, clock, registry, tags


def layer(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode() * 100).hexdigest()


def doc(model: str) -> dict[str, object]:
    return {
        "modules": {
            "pilot": {
                "image": IMAGE,
                "artifacts": [{"ref": f"reg.local:5000/m:{model}", "path": "/models", "confirm": True}],
            }
        }
    }


async def settle(pipe: Pipeline, passes: int = 4) -> None:
    for _ in range(passes):
        await pipe.reconcile()


def say(pipe: Pipeline, using: str, refused: dict[str, str] | None = None) -> None:
    assert pipe.artifacts is not None
    payload = {
        "using": [layer(using)],
        "refused": [{"digest": layer(d), "reason": r} for d, r in (refused or {}).items()],
    }
    pipe.artifacts.observe("pilot", "module.artifacts", json.dumps(payload).encode())


async def test_models_switch_under_the_container_and_refusals_roll_back(tmp_path: Path) -> None:
    pipe, rt, clock, _, tags = setup(tmp_path)
    slot = tmp_path / "artifacts" / "pilot" / "models"
    await pipe.start()
    await pipe.deploy(1, doc("v1"))
    await settle(pipe)
    (request,) = rt.requests.values()
    assert [(m.source, m.target, m.read_only) for m in request.mounts] == [(str(slot), "/models", True)]
    assert (slot / "current" / "model.onnx").read_bytes() == b"v1" * 100
    clock.now += 31
    await settle(pipe)
    # running long enough, but the module has not confirmed its model
    v1 = pipe.section()["versions"]["1"]
    assert v1["state"] == "activating" and "has not reported which artifact it uses" in v1["description"]
    say(pipe, "v1")
    await settle(pipe)
    assert pipe.state(1) == "good"
    stored = pipe.manager.store.current()
    assert stored is not None and stored.document["modules"]["pilot"]["artifacts"][0]["ref"] == (
        "reg.local:5000/m:v1@" + tags["reg.local:5000/m:v1"]
    )

    calls = len(rt.calls)
    await pipe.deploy(2, doc("v2"))
    await settle(pipe)
    assert [c[0] for c in rt.calls[calls:] if c[0] in ("create", "remove", "stop", "start")] == []
    assert (slot / "current" / "model.onnx").read_bytes() == b"v2" * 100
    assert (slot / "previous" / "model.onnx").read_bytes() == b"v1" * 100
    clock.now += 31
    await settle(pipe)
    v2 = pipe.section()["versions"]["2"]
    assert v2["state"] == "activating" and "the module still uses " + layer("v1")[:19] in v2["description"]
    say(pipe, "v2")
    await settle(pipe)
    assert pipe.state(2) == "good"
    modules = pipe.reported.get("modules")
    assert modules["pilot"]["artifacts"]["/models"]["module"] == "confirmed"
    assert modules["pilot"]["moduleReport"]["using"] == [layer("v2")]

    await pipe.deploy(3, doc("v3"))
    await settle(pipe)
    say(pipe, "v2", {"v3": "metadata input.shape is [1, 3, 64, 64]"})
    await settle(pipe)
    v3 = pipe.section()["versions"]["3"]
    assert (v3["state"], v3["code"], v3["module"]) == ("rolled_back", "artifact_refused", "pilot")
    assert "input.shape" in v3["description"] and pipe.section()["current"] == 2
    assert (slot / "current" / "model.onnx").read_bytes() == b"v2" * 100
    assert [c[0] for c in rt.calls[calls:] if c[0] in ("create", "remove", "stop", "start")] == []
    # the refused model is gone at once (not kept as `previous` until the next good deployment)
    v3_dir = "sha256-" + tags["reg.local:5000/m:v3"].removeprefix("sha256:")
    assert not (slot / v3_dir).exists() and not (slot / "previous").exists()
    assert [p.name for p in slot.iterdir() if p.name.startswith("sha256-")] == [
        "sha256-" + tags["reg.local:5000/m:v2"].removeprefix("sha256:")]

    await pipe.deploy(4, doc("stranger"))
    v4 = pipe.section()["versions"]["4"]
    assert (v4["state"], v4["code"], v4["module"]) == ("rejected", "artifact_untrusted_key", "pilot")
    assert "reg.local:5000/m:stranger (at /models)" in v4["description"]


async def test_a_corrupted_layer_rejects_the_version(tmp_path: Path) -> None:
    pipe, _, _, registry, _ = setup(tmp_path)
    await pipe.start()
    registry.blobs[layer("v1")] = b"tampered"
    await pipe.deploy(1, doc("v1"))
    v1 = pipe.section()["versions"]["1"]
    assert (v1["state"], v1["code"], v1["module"]) == ("rejected", "artifact_digest_mismatch", "pilot")
    assert pipe.manager.store.current() is None
    assert not (tmp_path / "artifacts" / "pilot" / "models" / "current").exists()


async def test_a_module_that_never_confirms_fails_at_the_apply_timeout(tmp_path: Path) -> None:
    pipe, _, clock, _, _ = setup(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc("v1"))
    await settle(pipe)
    clock.now += 301
    await settle(pipe)
    v1 = pipe.section()["versions"]["1"]
    assert (v1["state"], v1["code"], v1["module"]) == ("failed", "artifact_not_confirmed", "pilot")


async def test_confirm_without_telemetry_is_rejected_up_front(tmp_path: Path) -> None:
    clock = Clock()
    registry = FakeRegistry()
    tags = {"reg.local:5000/m:v1": registry.add(b"v1" * 100)}
    config = parse_config(CONFIG + "[telemetry]\nenabled = false\n")
    pipe = Pipeline(
        config,
        open_state_db(tmp_path / "state"),
        ReportedState(),
        FakeRuntime(clock=clock),
        TagVerifier(tags),
        clock=clock,
        artifacts=ArtifactDirs(tmp_path / "a", registry),
    )  # type: ignore[arg-type]
    await pipe.start()
    await pipe.deploy(1, doc("v1"))
    v1 = pipe.section()["versions"]["1"]
    assert (v1["state"], v1["code"], v1["module"]) == ("rejected", "artifact_confirm_unavailable", "pilot")
    assert "[telemetry] enabled" in v1["description"]


async def test_interrupted_downloads_are_collected_at_boot_and_after_a_pass(tmp_path: Path) -> None:
    pipe, _, _, _, _ = setup(tmp_path)
    slot = tmp_path / "artifacts" / "pilot" / "models"
    left = slot / ".staging-0123456789ab-dead"  # a download a power cut interrupted
    left.mkdir(parents=True)
    (left / "model.onnx").write_bytes(b"half a model")
    await pipe.start()
    assert not left.exists()

    await pipe.deploy(1, doc("v1"))
    assert pipe.artifacts is not None
    dirs = pipe.artifacts.dirs
    again, busy = slot / ".staging-0123456789ab-beef", slot / ".staging-0123456789ab-f00d"
    again.mkdir()
    busy.mkdir()
    dirs._staging.add(busy)  # a download in progress (its thread owns it)
    await settle(pipe, 1)
    await asyncio.gather(*pipe.manager._tasks)  # the collection runs in a thread, after the pass
    assert not again.exists() and busy.exists()
    assert (slot / "current" / "model.onnx").read_bytes() == b"v1" * 100


async def test_collection_keeps_what_the_version_being_verified_downloaded(tmp_path: Path) -> None:
    """Garbage collection when a version becomes good must not remove the download of a newer
    version still being verified (it would be downloaded again, or be missing offline)."""
    pipe, _, clock, registry, tags = setup(tmp_path)
    tags["reg.local:5000/gated:v9"] = registry.add(b"gated" * 100)
    verifier = pipe.manager.verifier
    gate = asyncio.Event()

    class Gated:
        async def verify(self, reference: str) -> VerifiedImage:
            if "gated" in reference:
                await gate.wait()
            return await verifier.verify(reference)

    pipe.manager.verifier = Gated()
    slot = tmp_path / "artifacts" / "pilot" / "models"
    await pipe.start()
    await pipe.deploy(1, doc("v1"))
    await settle(pipe)
    clock.now += 31
    say(pipe, "v1")
    await settle(pipe)
    assert pipe.state(1) == "good"

    two = doc("v2")
    two["modules"]["pilot"]["artifacts"].append({"ref": "reg.local:5000/gated:v9", "path": "/extra"})  # type: ignore[index]
    pipe.manager.submit(desired_document(2, two), trust=DocumentTrust(mode="off"))
    pinning = asyncio.create_task(pipe.manager.pin_pending())
    v2 = slot / ("sha256-" + tags["reg.local:5000/m:v2"].removeprefix("sha256:"))
    for _ in range(200):  # until v2's model is downloaded and the pinning waits at the gate
        if v2.exists():
            break
        await asyncio.sleep(0.01)
    assert v2.exists() and pipe.state(2) == "verifying"
    await pipe.manager.collect_garbage()
    assert v2.exists(), "the download of the version being verified was collected"
    gate.set()
    await pinning
    assert pipe.state(2) == "activating"
