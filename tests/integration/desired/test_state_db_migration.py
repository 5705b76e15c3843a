"""A state.db written by the previous release opens in this one (edge_agent/state_schema.py).

The fixture tests/fixtures/state_db/f034da0/ was written by release f034da0's own code
(tests/fixtures/state_db/make_fixture.py, run with that release); facts.json next to it is what
that code read back. Every test works on a copy, never on the committed file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.podman import PodmanService, podman
from devinfra.procs import free_port, wait_until
from edge_agent.checks import check_state_schema
from edge_agent.config import AgentConfig, parse_config
from edge_agent.deployment.reconciler import Reconciler
from edge_agent.deployment.store import ReconcilerStore
from edge_agent.desired.admission import Admitted, DocumentTrust, Duplicate, Refused, digest_of
from edge_agent.desired.manager import DesiredStateManager
from edge_agent.desired.store import StateStore
from edge_agent.reported import ReportedState
from edge_agent.state_schema import SCHEMA_VERSION, StateSchemaError, backup_path, migrate, schema_version
from edge_agent.store import STATE_DB_NAME, get_meta, open_state_db
from edge_agent.trust.cache import VerifyCache
from edge_agent.trust.passthrough import RegistryUnreachable
from edge_shared.protocol import desired_document
from edge_shared.trust.api import VerifiedImage
from tests.fakes.runtime import FakeRuntime

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "state_db" / "f034da0"
FACTS: dict[str, Any] = json.loads((FIXTURE / "facts.json").read_text())
APPLY_TIMEOUT_S = 60
# Version 1's pilot image: pulled by the old release, not version 4's.
LKG_PILOT = next(i for i in FACTS["pulled"] if "/pilot@" in i and i not in FACTS["current_images"].values())


class NoRegistry:
    """The image verifier of a device without a network (never reached by these tests' documents)."""

    async def verify(self, reference: str) -> VerifiedImage:
        raise RegistryUnreachable(f"{reference}: no network in this test")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A copy of the fixture's state directory."""
    copy = tmp_path / "state"
    shutil.copytree(FIXTURE, copy)
    return copy


def config_for(state: Path, **extra: str) -> AgentConfig:
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return parse_config(
        f'[device]\nid = "fixture-dev"\n[state]\ndir = "{state}"\n'
        f'[trust]\ndocument_keys = ["{state / "document_key.pub"}"]\n{lines}'
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def opened(state: Path) -> Iterator[sqlite3.Connection]:
    db = open_state_db(state)
    try:
        yield db
    finally:
        db.close()


def test_the_fixture_was_written_before_schema_versions() -> None:
    """Guards the fixture itself: a file of the old release, untouched by this one."""
    with contextlib.closing(sqlite3.connect(f"{(FIXTURE / STATE_DB_NAME).as_uri()}?mode=ro", uri=True)) as db:
        assert schema_version(db) == 0
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "twin_desired" in names and "_sqlite_migrations" not in names


def owner(state: Path, db: sqlite3.Connection) -> DesiredStateManager:
    config = config_for(state)
    return DesiredStateManager(config, db, ReportedState(), NoRegistry(),
                               Reconciler(config, ReconcilerStore(db), FakeRuntime()))


def test_every_fact_of_the_previous_release_survives(state: Path) -> None:
    original = sha256(state / STATE_DB_NAME)
    with opened(state) as db:
        assert schema_version(db) == SCHEMA_VERSION
        slots, deployments = StateStore(db), ReconcilerStore(db)
        current, lkg = slots.current(), slots.last_known_good()
        assert current is not None and lkg is not None
        assert (current.version, lkg.version) == (FACTS["current"], FACTS["last_known_good"])
        assert current.images == FACTS["current_images"]
        assert current.pinned().version == FACTS["current"]  # the pinned deployment still loads
        # deployment_bad_versions (written, never read) is gone; what became of version 3 is its
        # status row, which says the same.
        assert FACTS["bad_versions"] == {"3": "crashloop: pilot exited 5 times"}
        assert FACTS["states"]["3"] == "rolled_back"
        restarts = {m: [r.count, r.last_restart_at, r.total] for m, r in deployments.restarts().items()}
        assert restarts == FACTS["restarts"]
        assert sorted(deployments.pulled_images()) == FACTS["pulled"]

        manager = owner(state, db)
        store = manager.store
        assert {str(s.version): str(s.state) for s in store.versions()} == FACTS["states"]
        accepted = store.accepted()
        assert accepted is not None and accepted[:2] == (FACTS["current"], FACTS["accepted_digest"])
        assert digest_of(accepted[2]) == FACTS["accepted_digest"]  # the exact bytes, signature checkable
        assert [k.key_id for k in store.rotated_keys()] == FACTS["rotated_key_ids"]
        assert store.keys_version() == FACTS["keys_version"]
        # The rotation is still in force: the config's keys did not change.
        assert [k.key_id for k in manager.trust.keys] == FACTS["rotated_key_ids"]

        cache = VerifyCache(db)
        for repository, digest, policy in FACTS["verdicts"]:
            verdict = cache.lookup(repository, digest, policy)
            assert verdict is not None and verdict.signer == "cosign-key" and len(verdict.image_ids) == 1
        for reference, digest in FACTS["resolutions"].items():
            assert cache.resolution(reference) == digest
        assert get_meta(db, "boot_count") == str(FACTS["boot_count"])

        # twin_desired (the release before per-version status) was folded in and is gone.
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "twin_desired" not in names and "deployment_bad_versions" not in names
    # The migration rewrote data, so the file as it was is kept next to it.
    kept = backup_path(state / STATE_DB_NAME, SCHEMA_VERSION)
    assert kept.exists()
    with contextlib.closing(sqlite3.connect(kept)) as old:
        assert schema_version(old) == 0
        assert old.execute("SELECT version FROM twin_desired").fetchall() == [(FACTS["legacy_accepted"][0],)]
        assert old.execute("SELECT count(*) FROM desired_versions").fetchone() == (len(FACTS["states"]),)
    assert original == sha256(FIXTURE / STATE_DB_NAME)  # the committed fixture itself is never written


async def test_the_migrated_device_knows_the_highest_version_it_saw(state: Path) -> None:
    """Replay protection survives: older and equal versions are refused, the accepted document
    delivered again (the broker's retained copy) changes nothing, a newer one is admitted."""
    with opened(state) as db:
        manager = owner(state, db)
        await manager.start()
        accepted = manager.store.accepted()
        assert accepted is not None
        # The accepted document delivered again is not applied again. (It rotated the document
        # keys away from its own signer, so f034da0 refuses it as untrusted_key, and so does this
        # release: unchanged behaviour.)
        again = manager.submit(accepted[2])
        assert isinstance(again, Refused | Duplicate) and manager.store.accepted() == accepted
        off = DocumentTrust(mode="off")
        for version in (1, 3, 4):
            refused = manager.submit(desired_document(version, {"modules": {}}), trust=off)
            assert isinstance(refused, Refused) and refused.code == "replayed", (version, refused)
        section = manager.reported.get("deployment")
        assert isinstance(section, dict)
        assert (section["current"], section["lastKnownGood"]) == (FACTS["current"], FACTS["last_known_good"])
        assert {v: e["state"] for v, e in section["versions"].items()} == FACTS["states"]
        assert isinstance(manager.submit(desired_document(5, {"modules": {}}), trust=off), Admitted)


def test_a_legacy_twin_desired_row_becomes_the_accepted_document(state: Path) -> None:
    """A device that never accepted a document since the release before per-version status:
    its twin_desired row is all it has, and the migration moves it to desired_accepted."""
    with contextlib.closing(sqlite3.connect(state / STATE_DB_NAME)) as old, old:
        old.execute("DELETE FROM desired_accepted")
    with opened(state) as db:
        manager = owner(state, db)
        accepted = manager.store.accepted()
        assert accepted is not None and list(accepted[:2]) == FACTS["legacy_accepted"]
        assert digest_of(accepted[2]) == FACTS["legacy_accepted"][1]


def test_opening_twice_is_idempotent(state: Path) -> None:
    with opened(state) as db:
        first = list(db.iterdump())
        applied = db.execute("SELECT name FROM _sqlite_migrations ORDER BY id").fetchall()
    kept = backup_path(state / STATE_DB_NAME, SCHEMA_VERSION)
    kept_digest = sha256(kept)
    with opened(state) as db:
        assert migrate(db, state / STATE_DB_NAME) == []  # nothing left to do
        assert list(db.iterdump()) == first
        assert db.execute("SELECT name FROM _sqlite_migrations ORDER BY id").fetchall() == applied
        assert schema_version(db) == SCHEMA_VERSION
    assert len(applied) == SCHEMA_VERSION
    assert sha256(kept) == kept_digest  # the copy of the original is not replaced by a migrated file


def test_a_new_state_db_is_created_at_the_current_version_without_a_copy(tmp_path: Path) -> None:
    with opened(tmp_path / "fresh") as db:
        assert schema_version(db) == SCHEMA_VERSION
        assert StateStore(db).current() is None
    assert not backup_path(tmp_path / "fresh" / STATE_DB_NAME, SCHEMA_VERSION).exists()


def newer(state: Path) -> Path:
    """The fixture as a release with one more migration would leave it."""
    with opened(state):
        pass
    path = state / STATE_DB_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def test_a_state_db_from_a_newer_release_is_refused_untouched(state: Path) -> None:
    path = newer(state)
    before = sha256(path)
    with pytest.raises(StateSchemaError) as refused:
        open_state_db(state)
    message = str(refused.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message and f"up to {SCHEMA_VERSION}" in message
    assert sha256(path) == before


def test_edge_agent_check_tells_the_schema_without_writing(state: Path) -> None:
    path = state / STATE_DB_NAME
    before = sha256(path)
    old = check_state_schema(config_for(state))
    assert (old.outcome, old.detail) == ("pass", f"version 0: migrated to {SCHEMA_VERSION} when the agent starts")
    assert sha256(path) == before
    newer(state)
    refused = check_state_schema(config_for(state))
    assert refused.outcome == "fail" and f"version {SCHEMA_VERSION + 1}, written by a newer release" in refused.detail


def test_the_agent_refuses_a_newer_state_db_with_one_clear_line(state: Path, tmp_path: Path) -> None:
    path = newer(state)
    before = sha256(path)
    config = tmp_path / "config.toml"
    config.write_text(f'[device]\nid = "fixture-dev"\n[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    refusals = [line for line in proc.stderr.splitlines() if "written by a newer edge-agent release" in line]
    assert len(refusals) == 1, proc.stderr
    assert str(path) in refusals[0] and "EVENT=state.refused" in refusals[0]
    assert "Traceback" not in proc.stderr
    assert sha256(path) == before


def test_the_agent_boots_offline_from_the_previous_releases_state(
    state: Path, tmp_path: Path, podman_service: PodmanService
) -> None:
    """No broker (a closed port), no registry (the fixture's images are on 127.0.0.1:1): the
    agent opens the old file and hands its stored deployment (4) over before any network attempt.
    Version 4 was activated by the old release long before this boot and never became good, so
    the reconciler rolls back to the last-known-good deployment the old release recorded (1), and
    tries to run its pinned images, which only the (gone) registry has: it says so, and every
    fact of the old file is still there, plus the new ones."""
    with opened(state) as db:
        activated = StateStore(db).current()
    assert activated is not None and time.time() - activated.activated_at > APPLY_TIMEOUT_S  # the premise
    run_id = f"mig-{uuid.uuid4().hex[:8]}"
    config = (
        f'[device]\nid = "{run_id}"\n[logging]\nlevel = "debug"\nformat = "text"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[podman]\nsocket = "{podman_service.url}"\n'
        f"[attestation]\nenabled = false\n[telemetry]\nenabled = false\n"
        f'[trust]\ndocument_keys = ["{state / "document_key.pub"}"]\n'
        f'[deployment]\ncontainer_prefix = "{run_id}-"\napply_timeout_s = {APPLY_TIMEOUT_S}\n'
        f"backoff_initial_s = 1\nbackoff_max_s = 4\n"
    )
    agent = AgentProcess(tmp_path / "agent", config)
    agent.state_dir = state  # the copied fixture is the state directory
    agent.start()
    try:
        agent.wait_log("EVENT=deployment.loaded", timeout=30)
        log = agent.log()
        assert f"stored deployment {FACTS['current']} will be run (last known good: {FACTS['last_known_good']})" in log
        first_mqtt = min((m.start() for m in re.finditer(r"EVENT=mqtt\.", log)), default=len(log))
        assert log.index("EVENT=deployment.loaded") < first_mqtt
        agent.wait_log(f"deployment {FACTS['current']} failed", timeout=30)
        assert f"rolled back to {FACTS['last_known_good']}" in agent.log()

        # Version 1's pinned image is tried; podman retries a pull a few times before it gives up.
        agent.wait_log(f"pilot: pull {LKG_PILOT} failed", timeout=180)

        # What a reconcile pass decided is recorded by the owner when the pass returns.
        def reported() -> dict[str, Any]:
            status = agent.call("status")
            assert isinstance(status, dict)
            return dict(status["reported"]["deployment"])

        wait_until(lambda: reported()["current"] == FACTS["last_known_good"], 30, "the rollback reported")
        section = reported()
        assert section["lastKnownGood"] == FACTS["last_known_good"]
        states = {v: e["state"] for v, e in section["versions"].items()}
        assert states == {**FACTS["states"], "4": "rolled_back"}
        assert section["versions"]["3"]["code"] == "crashloop"  # as the old release recorded it
        agent.wait_log("EVENT=mqtt.retry", timeout=20)  # and the broker really is unreachable
        assert agent.stop() == 0
    finally:
        agent.stop()
        ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={run_id}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)
    with opened(state) as db:
        slots = StateStore(db)
        current = slots.current()
        assert current is not None and current.version == FACTS["last_known_good"]
        assert current.images["pilot"] == LKG_PILOT
        rows = {s.version: s for s in slots.versions()}
        assert (rows[3].state, rows[4].state) == ("rolled_back", "rolled_back")
        assert get_meta(db, "boot_count") == str(FACTS["boot_count"] + 1)
