"""How fast a delivered model reaches the loop, without weakening its checks: the watcher wakes on
inotify events (a symlink switch as the agent does it, a file renamed into the folder) rather than
its poll; a check process started ahead refuses what a fresh one refuses and checks one model only;
a swap or a refusal is reported to the agent at once, and the stats name each model's first tick."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from edge_pilot.drive import DriveLoop, LoopConfig, report_due
from edge_pilot.estop import EmergencyStop
from edge_pilot.folder_events import FolderEvents
from edge_pilot.hotswap import ModelSlot, ModelWatcher
from edge_pilot.model import PilotModel
from edge_pilot.model_check import StandbyCheck, check_in_subprocess
from edge_pilot.signing import load_public_key
from edge_pilot.sim.lockstep import LockStepSim
from edge_pilot.sim.world import SimWorld

from .conftest import PILOT_DIR, SHIPPED_MODEL, deliver
from .helpers import wait_for
from .test_actuation_loop import RecordingTelemetry
from .test_selftest import biased

INT8_MODEL = PILOT_DIR / "models" / "model.int8.onnx"


# ---------------------------------------------------------------- report_due (pure)

def test_a_model_report_is_due_on_any_change_and_else_only_after_its_interval() -> None:
    a = {"using": ["sha256:" + "a" * 64], "refused": []}
    b = {"using": ["sha256:" + "b" * 64], "refused": []}
    refused = {"using": a["using"], "refused": [{"digest": "sha256:" + "c" * 64, "reason": "shape"}]}
    assert report_due(a, None, 0.0, float("-inf"), 5.0)  # never sent
    assert not report_due(a, dict(a), 1.0, 0.0, 5.0)  # same, within the interval
    assert report_due(a, dict(a), 5.0, 0.0, 5.0)  # same, the interval is over
    assert report_due(b, a, 1.0, 0.0, 5.0)  # another model
    assert report_due(refused, a, 1.0, 0.0, 5.0)  # a refusal


# ---------------------------------------------------------------- folder events (real inotify)

def test_folder_events_wake_on_a_symlink_switch_and_on_a_file_renamed_in(tmp_path: Path) -> None:
    slot = tmp_path / "models"
    (slot / "v1").mkdir(parents=True)
    (slot / "v2").mkdir()
    os.symlink("v1", slot / "current")
    events = FolderEvents(slot / "current")
    try:
        assert events.active
        assert not events.wait(0)  # nothing changed yet
        # the agent's switch: a new symlink renamed over `current`
        os.symlink("v2", slot / ".current.tmp")
        os.replace(slot / ".current.tmp", slot / "current")
        assert events.wait(30)
        assert not events.wait(0)  # drained
        # a file renamed into the folder `current` points at now (re-watched after the switch)
        (slot / "v2" / ".model.tmp").write_bytes(b"x")
        assert events.wait(30)  # its close_write
        os.replace(slot / "v2" / ".model.tmp", slot / "v2" / "model.onnx")
        assert events.wait(30)
        # and close() is prompt even while a wait is pending elsewhere: wake() ends a wait
        events.wake()
        assert events.wait(30)
    finally:
        events.close()


def test_folder_events_see_the_folder_appear_when_it_did_not_exist_yet(tmp_path: Path) -> None:
    slot = tmp_path / "models"
    slot.mkdir()
    events = FolderEvents(slot / "current")
    try:
        (slot / "v1").mkdir()
        assert events.wait(30)
        events.wait(0)
        os.symlink("v1", slot / "current")
        assert events.wait(30)
    finally:
        events.close()


def test_without_a_parent_to_watch_the_watcher_falls_back_to_polling(tmp_path: Path) -> None:
    events = FolderEvents(tmp_path / "missing" / "current")
    try:
        assert not events.active
        assert not events.wait(0)
    finally:
        events.close()


def test_the_watcher_swaps_a_delivered_model_on_the_event_not_its_poll(
    tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path
) -> None:
    models = tmp_path / "models"
    deliver(models, SHIPPED_MODEL.read_bytes(), signing_key)
    slot = ModelSlot(PilotModel.from_file(models / "model.onnx"))
    # a poll of an hour: only the inotify event can make it look within the wait below
    watcher = ModelWatcher(models, slot, load_public_key(public_key_pem), poll_s=3600)
    watcher.last_fingerprint = watcher.fingerprint()
    watcher.start()
    try:
        new = INT8_MODEL.read_bytes()
        deliver(models, new, signing_key)
        assert wait_for(lambda: slot.swap_if_pending() is not None and slot.swaps == 1, 120)
        assert slot.current.sha256 == hashlib.sha256(new).hexdigest()  # type: ignore[union-attr]
        assert watcher.refusals == []
    finally:
        watcher.close()


# ---------------------------------------------------------------- the standby check process

def test_a_standby_check_refuses_what_a_fresh_check_refuses_and_checks_one_model_only(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()

    def place(data: bytes) -> None:
        (models / "model.onnx.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
        (models / "model.onnx").write_bytes(data)

    place(biased(0.1))
    fresh = check_in_subprocess(models, None, 256 << 20, 120, nice=0)
    standby = StandbyCheck(1, nice=0)
    try:
        ready = check_in_subprocess(models, None, 256 << 20, 120, standby=standby)
        assert not ready.ok and ready.reason == fresh.reason and "self-test failed" in ready.reason
        assert not standby.usable()  # it exited after its one model
    finally:
        standby.close()
    place(INT8_MODEL.read_bytes())
    standby = StandbyCheck(1, nice=0)
    try:
        ok = check_in_subprocess(models, None, 256 << 20, 120, standby=standby)
        assert ok.ok and ok.sha256 == hashlib.sha256(INT8_MODEL.read_bytes()).hexdigest() and ok.mae is not None
    finally:
        standby.close()
    # a standby that died before its job: a fresh process checks the model instead
    standby = StandbyCheck(1, nice=0)
    standby.close()
    again = check_in_subprocess(models, None, 256 << 20, 120, nice=0, standby=standby)
    assert again.ok and again.sha256 == ok.sha256


def test_a_standby_check_keeps_the_memory_budget(tmp_path: Path) -> None:
    from .hostile_models import expands_at_load

    models = tmp_path / "models"
    models.mkdir()
    data = expands_at_load(512)
    (models / "model.onnx.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    (models / "model.onnx").write_bytes(data)
    standby = StandbyCheck(1, nice=0)
    try:
        r = check_in_subprocess(models, None, 64 << 20, 120, standby=standby)
    finally:
        standby.close()
    assert not r.ok and "memory" in r.reason, r.reason


# ---------------------------------------------------------------- the report to the agent

def test_a_swap_is_reported_at_once_and_the_stats_name_the_first_tick_it_drove() -> None:
    first, new = PilotModel.from_file(SHIPPED_MODEL), PilotModel.from_file(INT8_MODEL)
    sim = LockStepSim(SimWorld(seed=3))
    slot = ModelSlot(first)
    telemetry = RecordingTelemetry()
    # stats only every hour: any report seen below was sent because the model changed
    loop = DriveLoop(sim, sim, slot, EmergencyStop(), telemetry, LoopConfig(hz=200, stats_interval_s=3600))  # type: ignore[arg-type]
    offered_at: list[float] = []

    def until() -> bool:
        if loop.totals["frames"] == 3 and not offered_at:
            offered_at.append(time.time())
            slot.offer(new)
        return slot.swaps == 1 and loop.totals["frames"] >= 6

    loop.run(duration=120, until=until)
    assert slot.swaps == 1 and telemetry.stats() == []
    assert telemetry.artifacts() == [{"using": [f"sha256:{first.sha256}"], "refused": []},
                                     {"using": [f"sha256:{new.sha256}"], "refused": []}]
    loop._publish(loop.clock())
    stats = telemetry.stats()[-1]
    assert stats["drove_model"] == stats["model"] == new.sha256[:16]
    assert offered_at[0] <= stats["drove_model_since"] <= time.time()


def test_a_standby_check_that_dies_waiting_is_not_started_again_and_models_are_still_checked(
    tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path
) -> None:
    models = tmp_path / "models"
    deliver(models, SHIPPED_MODEL.read_bytes(), signing_key)
    slot = ModelSlot(PilotModel.from_file(models / "model.onnx"))
    watcher = ModelWatcher(models, slot, load_public_key(public_key_pem), poll_s=3600)
    watcher.last_fingerprint = watcher.fingerprint()
    try:
        watcher._prepare_standby()
        standby = watcher._standby
        assert standby is not None and standby.usable()
        standby.proc.kill()  # e.g. the kernel's OOM killer while it waited
        standby.proc.wait()
        watcher._prepare_standby()
        assert watcher._standby is None and watcher.checks.standby is False
        deliver(models, INT8_MODEL.read_bytes(), signing_key)
        assert watcher.check_once()  # checked in a fresh process
        assert watcher.accepted == [hashlib.sha256(INT8_MODEL.read_bytes()).hexdigest()]
    finally:
        watcher.close()
