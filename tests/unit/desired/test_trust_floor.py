"""The replay floor and rotation kept across agent roll-backs (edge_agent/desired/trust_floor.py):
the pure decisions, the file, and the owner after a roll-back restored an older state.db."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from edge_agent.desired import trust_floor
from edge_agent.desired.admission import Admitted, Refused
from edge_agent.desired.trust_floor import TrustFloor, keys_to_restore, merged
from edge_agent.store import open_state_db
from edge_shared.trust import keys
from tests.unit.desired.test_manager import NEW, OLD, Rig, accept, key_id, pem, signed
from tests.unit.desired.test_manager import config as config

THIRD = keys.generate_private_key()
F = TrustFloor(5, "d5", "cfg", 4, ("K4",))


# --------------------------------------------------------------------------- pure


def test_merged_moves_the_floor_only_forward() -> None:
    assert merged(F, version=3, digest="d3", config="cfg", keys_version=None, keys=()).version == 5
    assert merged(F, version=3, digest="d3", config="cfg", keys_version=None, keys=()).digest == "d5"
    assert merged(F, version=6, digest="d6", config="cfg", keys_version=None, keys=()).digest == "d6"
    assert merged(None, version=1, digest="d1", config="cfg", keys_version=None, keys=()) == \
        TrustFloor(1, "d1", "cfg", None, ())


def test_merged_keeps_the_newest_rotation_whole() -> None:
    older_db = merged(F, version=5, digest="d5", config="cfg", keys_version=2, keys=("K2", "K3"))
    assert (older_db.keys_version, older_db.keys) == (4, ("K4",))  # no union: a dropped key stays dropped
    newer = merged(F, version=6, digest="d6", config="cfg", keys_version=6, keys=("K6",))
    assert (newer.keys_version, newer.keys) == (6, ("K6",))
    no_rotation_in_db = merged(F, version=5, digest="d5", config="cfg", keys_version=None, keys=())
    assert (no_rotation_in_db.keys_version, no_rotation_in_db.keys) == (4, ("K4",))


def test_merged_drops_a_rotation_the_operator_overruled() -> None:
    edited = merged(F, version=5, digest="d5", config="edited", keys_version=None, keys=())
    assert (edited.keys_version, edited.keys, edited.version, edited.config) == (None, (), 5, "edited")


@pytest.mark.parametrize(("floor", "config", "db_version", "expected"), [
    (None, "cfg", None, None),
    (F, "cfg", None, (4, ("K4",))),
    (F, "cfg", 2, (4, ("K4",))),
    (F, "cfg", 4, None),
    (F, "cfg", 7, None),
    (F, "edited", None, None),
    (TrustFloor(5, "d5", "cfg"), "cfg", None, None),
])
def test_keys_to_restore(floor: TrustFloor | None, config: str, db_version: int | None,
                         expected: tuple[int, tuple[str, ...]] | None) -> None:
    assert keys_to_restore(floor, config=config, db_keys_version=db_version) == expected


def test_the_file_round_trips_and_a_foreign_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / trust_floor.FILE_NAME
    assert trust_floor.read(path) is None
    trust_floor.write(path, F)
    assert trust_floor.read(path) == F
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text('{"version": "x"}')
    with pytest.raises(trust_floor.TrustFloorError, match=r"document-trust\.json"):
        trust_floor.read(path)


# --------------------------------------------------------------------------- the owner after a roll-back


def snapshot(db: sqlite3.Connection, to: Path) -> None:
    """The guard's copy of state.db taken before the switch (a consistent one)."""
    with sqlite3.connect(to) as copy:
        db.backup(copy)
    copy.close()


def roll_back(state: Path, saved: Path) -> sqlite3.Connection:
    """The guard's restore: state.db as saved, no WAL of the trial; everything else left alone."""
    for name in ("state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    shutil.copyfile(saved, state / "state.db")
    return open_state_db(state)


async def test_a_roll_back_keeps_a_rotation_and_the_replay_floor(config: AgentConfig, tmp_path: Path) -> None:
    state, saved = config.state.dir, tmp_path / "state-before-update.db"
    before = await Rig(config, open_state_db(state)).start()
    v1 = signed(1)
    await accept(before, v1, 1)
    snapshot(before.db, saved)
    # The trial: version 2 rotates the keys from OLD to NEW, version 3 is signed by NEW.
    v2 = signed(2, rotate_to=[pem(NEW)])
    await accept(before, v2, 2)
    v3 = signed(3, "reg.local/pilot:3", key=NEW)
    await accept(before, v3, 3)
    await before.stop()
    before.db.close()

    after = await Rig(config, roll_back(state, saved)).start()
    try:
        assert after.manager.store.current() is not None and after.manager.store.current().version == 1  # type: ignore[union-attr]
        assert [k.key_id for k in after.manager.trust.keys] == [key_id(NEW)]
        assert after.manager.store.keys_version() == 2
        for version in (2, 3):  # the old version numbers, re-signed by the still-trusted key: replays
            refused = after.manager.submit(signed(version, "reg.local/other:1", key=NEW))
            assert isinstance(refused, Refused) and refused.code == "replayed", refused
        old_key = after.manager.submit(signed(4, key=OLD))
        assert isinstance(old_key, Refused) and old_key.code == "untrusted_key"
        # The retained document (version 3, signed by NEW) is accepted again.
        assert isinstance(after.manager.submit(v3), Admitted)
        await after.until_state(3, "activating")
    finally:
        await after.stop()


async def test_a_rotation_that_revoked_a_key_stays_revoked_after_a_roll_back(
        config: AgentConfig, tmp_path: Path) -> None:
    state, saved = config.state.dir, tmp_path / "state-before-update.db"
    before = await Rig(config, open_state_db(state)).start()
    await accept(before, signed(1, rotate_to=[pem(NEW)]), 1)  # before the trial: OLD -> NEW
    snapshot(before.db, saved)
    await accept(before, signed(2, key=NEW, rotate_to=[pem(THIRD)]), 2)  # the trial: NEW -> THIRD (NEW revoked)
    await before.stop()
    before.db.close()

    after = await Rig(config, roll_back(state, saved)).start()
    try:
        assert [k.key_id for k in after.manager.trust.keys] == [key_id(THIRD)]
        revoked = after.manager.submit(signed(5, key=NEW))
        assert isinstance(revoked, Refused) and revoked.code == "untrusted_key"
        assert isinstance(after.manager.submit(signed(5, key=THIRD)), Admitted)
    finally:
        await after.stop()


async def test_without_the_file_a_roll_back_goes_back_whole(config: AgentConfig, tmp_path: Path) -> None:
    """The control: it is the file that keeps them (a release before it lost both)."""
    state, saved = config.state.dir, tmp_path / "state-before-update.db"
    before = await Rig(config, open_state_db(state)).start()
    await accept(before, signed(1), 1)
    snapshot(before.db, saved)
    await accept(before, signed(2, rotate_to=[pem(NEW)]), 2)
    await before.stop()
    before.db.close()
    (state / trust_floor.FILE_NAME).unlink()
    after = await Rig(config, roll_back(state, saved)).start()
    try:
        assert [k.key_id for k in after.manager.trust.keys] == [key_id(OLD)]
        assert isinstance(after.manager.submit(signed(2, "reg.local/other:1")), Admitted)
    finally:
        await after.stop()


async def test_an_unreadable_file_is_reported_and_state_db_is_used(config: AgentConfig) -> None:
    """Bad input loses nothing: the agent starts on state.db's floor and keys, and rewrites the file."""
    state = config.state.dir
    state.mkdir(parents=True, exist_ok=True)
    (state / trust_floor.FILE_NAME).write_text("not json")
    rig = await Rig(config, open_state_db(state)).start()
    try:
        assert [k.key_id for k in rig.manager.trust.keys] == [key_id(OLD)]
        await accept(rig, signed(1), 1)
        await rig.manager.floor_written()  # written off the event loop, after the commit
        floor = trust_floor.read(state / trust_floor.FILE_NAME)
        assert floor is not None and floor.version == 1
    finally:
        await rig.stop()


async def test_the_file_is_written_off_the_event_loop_newest_floor_wins(
        config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow disk holds the file's write, not the owner: versions 2 and 3 are accepted while the
    write of 1 hangs, and the next write carries 3 (2 is never written: the floor only moves
    forward, so the newest holds it). The stop waits for the write."""
    written: list[int] = []
    release = threading.Event()
    write = trust_floor.write

    def slow_write(path: Path, floor: TrustFloor) -> None:
        if not written:
            release.wait(30)
        write(path, floor)
        written.append(floor.version)

    monkeypatch.setattr(trust_floor, "write", slow_write)
    rig = await Rig(config, open_state_db(config.state.dir)).start()
    try:
        await accept(rig, signed(1), 1)
        await accept(rig, signed(2), 2)
        await accept(rig, signed(3), 3)
        assert written == []  # the first write still hangs; the owner went on
        assert rig.manager.floor is not None and rig.manager.floor.version == 3
        release.set()
    finally:
        release.set()
        await rig.stop()
    assert written == [1, 3]
    floor = trust_floor.read(config.state.dir / trust_floor.FILE_NAME)
    assert floor is not None and floor.version == 3


async def test_a_failed_write_is_reported_and_the_next_commit_writes_again(
        config: AgentConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    write = trust_floor.write
    failures = [OSError("No space left on device")]

    def failing_once(path: Path, floor: TrustFloor) -> None:
        if failures:
            raise failures.pop()
        write(path, floor)

    monkeypatch.setattr(trust_floor, "write", failing_once)
    rig = await Rig(config, open_state_db(config.state.dir)).start()
    try:
        await accept(rig, signed(1), 1)
        await rig.manager.floor_written()
        assert "cannot keep the replay floor across roll-backs (No space left on device)" in caplog.text
        assert trust_floor.read(config.state.dir / trust_floor.FILE_NAME) is None
        await accept(rig, signed(2), 2)
        await asyncio.wait_for(rig.manager.floor_written(), 30)
        floor = trust_floor.read(config.state.dir / trust_floor.FILE_NAME)
        assert floor is not None and floor.version == 2
    finally:
        await rig.stop()
