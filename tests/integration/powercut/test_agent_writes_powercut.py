"""The agent's own durable writes on the power-cut filesystem, the power cut after every change
(each write, rename, fsync, directory fsync), then the reboot's checks:
- state.db (edge_agent.store: the connection and transactions every state store uses) through an
  accept, an activation and a roll-back: it opens, passes integrity_check, and holds the state of
  before or after the interrupted commit, never one before a commit that had returned;
- artifact placement (staging, rename into place, `current`/`previous`, collection): what the links
  name is whole and matches its digests, and never older than a switch that had returned;
- the telemetry queue (append, read and delete what was sent, expire): it opens and passes
  integrity_check; no record whose append had returned (acknowledged to the module) is lost unless a
  delete of it was under way; no deleted record whose delete had returned comes back.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.powercut_fs import PowerCutFS
from edge_agent.artifacts.placement import CURRENT, MANIFEST_FILE, PREVIOUS, ArtifactDirs
from edge_agent.store import get_meta, open_state_db, set_meta, transaction
from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import Accepted, NewRecord, TelemetryQueue
from edge_shared.artifacts.format import artifact_contents
from tests.integration.powercut.explore import Exploration, Step, explore
from tests.unit.artifacts.test_placement import FakeRegistry


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerCutFS]:
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with PowerCutFS(tmp_path / "backing", tmp_path / "mnt") as mounted:
        yield mounted


def report(name: str, found: Exploration) -> None:
    print(f"{name}: {found.changes} cut points, {found.cuts} cuts checked, {len(found.violations)} violations")
    assert found.changes > 0
    assert not found.violations, f"{len(found.violations)} violations:\n" + "\n".join(found.violations[:15])


# ---------------------------------------------------------------------------------------------------
# state.db


STATES = [
    {"phase": "initial", "document": "v1", "active": "v1"},
    {"phase": "accepted", "document": "v2", "active": "v1"},
    {"phase": "active", "document": "v2", "active": "v2"},
    {"phase": "rolled_back", "document": "v2", "active": "v1"},
]


def test_state_db_commits(fs: PowerCutFS, tmp_path: Path) -> None:
    template = tmp_path / "template"
    with contextlib.closing(open_state_db(template / "state")) as conn, transaction(conn):
        for key, value in STATES[0].items():
            set_meta(conn, key, value)
    state = fs.mountpoint / "state"
    returned = [0]  # the newest state whose commit returned

    def commit(i: int) -> Step:
        def step() -> None:
            conn = open_state_db(state)
            try:
                with transaction(conn):
                    for key, value in STATES[i].items():
                        set_meta(conn, key, value)
                returned[0] = i
            finally:
                conn.close()

        return step

    def reset_marks() -> None:
        returned[0] = 0

    steps: list[Step] = [reset_marks, commit(1), commit(2), commit(3)]

    def after_cut(k: int, keep_names: bool) -> list[str]:
        gc.collect()
        try:
            conn = open_state_db(state)
        except Exception as e:  # any failure to open is the violation
            return [f"state.db does not open: {e}"]
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()
            if check != ("ok",):
                return [f"integrity_check: {check}"]
            now = {key: get_meta(conn, key) for key in STATES[0]}
        finally:
            conn.close()
        if now not in STATES:
            return [f"state.db holds {now}: no state it ever had"]
        i = STATES.index(now)
        if i < returned[0] or i > returned[0] + 1:
            return [f"state.db holds state {i} ({now['phase']}) after the commit of state {returned[0]} returned"]
        return []

    report("state.db", explore(fs, template, steps, after_cut, lambda: after_cut(0, False)))


# ---------------------------------------------------------------------------------------------------
# artifacts


def test_artifact_placement(fs: PowerCutFS, tmp_path: Path) -> None:
    registry = FakeRegistry()
    digests = [registry.add(f"model {i}".encode() * 200) for i in range(3)]
    template = tmp_path / "template"
    template.mkdir()
    dirs = ArtifactDirs(fs.mountpoint / "artifacts", registry)  # type: ignore[arg-type]
    switched: list[str] = []  # digests whose switch returned, in order

    def fetch(i: int) -> Step:
        return lambda: dirs.fetch("pilot", "models", f"r.local/m@{digests[i]}")

    def switch(i: int) -> Step:
        def step() -> None:
            dirs.switch("pilot", "models", digests[i])
            switched.append(digests[i])

        return step

    def collect() -> None:
        dirs.collect("pilot", "models", set())

    steps: list[Step] = [switched.clear, fetch(0), switch(0), fetch(1), switch(1), collect,
                         fetch(2), switch(2), collect]

    def whole(which: str) -> tuple[str | None, list[str]]:
        digest = dirs.link("pilot", "models", which)
        slot = dirs.slot_dir("pilot", "models")
        if digest is None:
            return None, ([f"{which} is not a link to a version"] if os.path.lexists(slot / which) else [])
        version = slot / which
        try:
            contents = artifact_contents((version / MANIFEST_FILE).read_bytes())
        except Exception as e:  # a version without a readable manifest is the violation
            return digest, [f"{which} -> {digest[:19]}: no readable manifest ({e})"]
        found = []
        for f in contents.files:
            try:
                data = (version / f.name).read_bytes()
            except OSError as e:
                found.append(f"{which} -> {digest[:19]}: {f.name}: {e.strerror}")
                continue
            if "sha256:" + hashlib.sha256(data).hexdigest() != f.digest:
                found.append(f"{which} -> {digest[:19]}: {f.name} does not match its digest ({len(data)} bytes)")
            mode = (version / f.name).stat().st_mode & 0o777
            if mode != 0o644:
                found.append(f"{which} -> {digest[:19]}: {f.name} has mode {mode:o}, the module cannot read it")
        return digest, found

    def after_cut(k: int, keep_names: bool) -> list[str]:
        current, found = whole(CURRENT)
        _, more = whole(PREVIOUS)
        found += more
        if switched:
            last = digests.index(switched[-1])
            at = digests.index(current) if current in digests else -1
            if at < last:
                found.append(f"current is {'nothing' if current is None else f'model {at}'} after the switch "
                             f"to model {last} returned")
        return found

    umask = os.umask(0o077)  # the agent's (UMask= of edge-agent.service): modes are set, not inherited
    try:
        found = explore(fs, template, steps, after_cut, lambda: after_cut(0, False))
    finally:
        os.umask(umask)
    report("artifacts", found)


# ---------------------------------------------------------------------------------------------------
# telemetry queue


def new_records(tag: str, n: int) -> list[NewRecord]:
    return [NewRecord("pilot", "detections", 5, None, f'{{"r": "{tag}-{i}"}}'.encode()) for i in range(n)]


def test_telemetry_queue(fs: PowerCutFS, tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    path = fs.mountpoint / "telemetry.db"
    rules = Rules(StreamRules(None, "drop-oldest", 0), {})
    queue: list[TelemetryQueue] = []
    acked: set[bytes] = set()  # payloads whose append returned: acknowledged to the module
    deleting: set[bytes] = set()  # payloads a delete was started for
    deleted: set[bytes] = set()  # payloads whose delete returned
    sent_as: dict[bytes, int] = {}  # payload -> the record number it was uploaded under

    def start() -> None:
        acked.clear()
        deleting.clear()
        deleted.clear()
        sent_as.clear()
        q = TelemetryQueue(path, 1 << 22, rules)
        queue[:] = [q]
        q.open()

    def append(tag: str, n: int) -> Step:
        def step() -> None:
            batch = new_records(tag, n)
            outcomes = queue[0].append(batch)
            acked.update(r.payload for r, o in zip(batch, outcomes, strict=True) if isinstance(o, Accepted))

        return step

    def send_some() -> None:
        q = queue[0]
        batch = q.read_batch("detections", 0, 3, 1 << 20)
        payloads = {r.payload for r in batch}
        sent_as.update({r.payload: r.n for r in batch})
        deleting.update(payloads)
        q.delete_sent("detections", batch[0].n, batch[-1].n)
        deleted.update(payloads)

    def stop() -> None:
        queue[0].close()

    steps: list[Step] = [start, append("a", 4), append("b", 3), send_some, append("c", 5), send_some, stop]

    def kill() -> None:
        if queue:  # the agent's process is gone: its connection too
            with contextlib.suppress(Exception):
                queue[0].close()
            if queue[0].conn is not None:
                queue[0].conn.close()
        gc.collect()

    def after_cut(k: int, keep_names: bool) -> list[str]:
        q = TelemetryQueue(path, 1 << 22, rules)
        try:
            q.open()
        except Exception as e:  # a queue that does not open is the violation
            return [f"telemetry.db does not open: {e}"]
        try:
            check = q.integrity_check()
            conn = q.conn
            assert conn is not None
            numbered = {bytes(row[0]): row[1] for row in conn.execute("SELECT payload, n FROM records")}
            stored = set(numbered)
        finally:
            q.close()
        found = [] if check == "ok" else [f"integrity_check: {check}"]
        lost = acked - stored - deleting
        if lost:
            found.append(f"{len(lost)} acknowledged records lost: {sorted(lost)[:3]}")
        # The queue deletes uploaded records in bulk in a later commit (docs/telemetry.md): after a
        # cut they may come back, and are uploaded again under the number they had, which the
        # fleet drops as a duplicate. Under another number they would be a second record.
        back = stored & deleted
        renumbered = sorted(p for p in back if numbered[p] != sent_as[p])
        if renumbered:
            found.append(f"{len(renumbered)} uploaded records came back under another number: {renumbered[:3]}")
        return found

    found = explore(fs, template, steps, after_cut, lambda: after_cut(0, False), kill)
    report("telemetry", found)


def test_sqlite_without_fsync_loses_a_returned_commit_here(fs: PowerCutFS, tmp_path: Path) -> None:
    """The filesystem does make SQLite lose what it never synced: what the scenarios above check can happen."""
    template = tmp_path / "template"
    with contextlib.closing(open_state_db(template / "state")) as conn, transaction(conn):
        set_meta(conn, "phase", "initial")
    db = fs.mountpoint / "state" / "state.db"
    from tests.integration.powercut.explore import reset

    reset(fs, template)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("UPDATE meta SET value='accepted' WHERE key='phase'")
    conn.close()
    fs.cut()
    with contextlib.closing(open_state_db(fs.mountpoint / "state")) as conn:
        assert get_meta(conn, "phase") == "initial"  # the commit had returned, and is gone


# ---------------------------------------------------------------------------------------------------
# document-trust.json (the replay floor and rotated keys an agent roll-back must not undo)


def test_document_trust_file(fs: PowerCutFS, tmp_path: Path) -> None:
    """The file as the desired-state owner writes it after each accepted document (merged: each part
    only moves forward): v1, v2 rotating the keys, v3. After any cut the file reads (never a
    TrustFloorError), its floor is never below the last write that returned, and a rotation whose
    write returned is never lost."""
    from edge_agent.desired import trust_floor

    template = tmp_path / "template"
    template.mkdir()
    path = fs.mountpoint / trust_floor.FILE_NAME
    accepted = [(1, None, ()), (2, 2, ("K2-pem",)), (3, None, ())]  # version, rotation version, its keys
    returned: list[trust_floor.TrustFloor | None] = [None]

    def accept(version: int, keys_version: int | None, keys: tuple[str, ...]) -> Step:
        def step() -> None:
            new = trust_floor.merged(returned[0], version=version, digest=f"d{version}", config="cfg",
                                     keys_version=keys_version, keys=keys)
            trust_floor.write(path, new)
            returned[0] = new

        return step

    def reset_marks() -> None:
        returned[0] = None

    steps: list[Step] = [reset_marks, *(accept(*a) for a in accepted)]

    def after_cut(k: int, keep_names: bool) -> list[str]:
        try:
            now = trust_floor.read(path)
        except (OSError, trust_floor.TrustFloorError) as e:
            return [f"document-trust.json does not read: {e}"]
        last = returned[0]
        if last is None:
            return []
        if now is None:
            return [f"document-trust.json is gone after the write of version {last.version} returned"]
        problems = []
        if now.version < last.version:
            problems.append(f"the floor went down: {now.version} after the write of {last.version} returned")
        if last.keys_version is not None and (now.keys_version, now.keys) != (last.keys_version, last.keys):
            problems.append(f"the rotation of version {last.keys_version} was lost: {now}")
        return problems

    report("document-trust.json", explore(fs, template, steps, after_cut, lambda: after_cut(0, False)))
