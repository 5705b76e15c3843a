"""DesiredStateManager against a real state.db and a fake image verifier, its pinning loop running
and the reconciler's passes handed over by hand (PassResult): newest wins, pinning, the one commit,
rotation only on acceptance, refusals that change nothing, registry retries, restart, and what
pass results do to the state (edge_agent/desired/manager.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, parse_config
from edge_agent.control import CommandError
from edge_agent.deployment.pinned import CommittedDeployment
from edge_agent.deployment.reconciler import PassResult, Reconciler
from edge_agent.deployment.restart_policy import RestartState
from edge_agent.deployment.rollback import Failed, Good, Probation, Settled
from edge_agent.deployment.store import ReconcilerStore
from edge_agent.desired import manager as manager_module
from edge_agent.desired.admission import Admitted, Duplicate, Refused, digest_of
from edge_agent.desired.manager import DesiredStateManager
from edge_agent.desired.status import STORED_VERSIONS
from edge_agent.desired.store import StateStore, Transition
from edge_agent.reported import ReportedState
from edge_agent.store import open_state_db
from edge_agent.trust.passthrough import RegistryUnreachable
from edge_shared.trust import keys
from edge_shared.trust.api import ImageRejected, VerifiedImage
from edgectl.documents import sign_document
from tests.fakes.runtime import FakeRuntime

OLD = keys.generate_private_key()
NEW = keys.generate_private_key()
EVIL = keys.generate_private_key()


def key_id(priv: keys.PrivateKey) -> str:
    return keys.key_id(priv.public_key())


def pem(priv: keys.PrivateKey) -> bytes:
    return keys.public_key_pem(priv.public_key())


def doc(version: int, *images: str, **extra: Any) -> dict[str, Any]:
    modules = {ref.split("/")[1].split(":")[0]: {"image": ref} for ref in images or ("reg.local/pilot:1",)}
    return {"schema": 1, "version": version, "deployment": {"modules": modules}, **extra}


def signed(version: int, *images: str, key: keys.PrivateKey = OLD, rotate_to: list[bytes] | None = None,
           **extra: Any) -> bytes:
    return sign_document(doc(version, *images, **extra), key, rotate_to=rotate_to)


def pinned(reference: str) -> str:
    return f"{reference.rsplit(':', 1)[0]}@sha256:{hashlib.sha256(reference.encode()).hexdigest()}"


class FakeVerifier:
    """ImageVerifier: resolves every reference to a made-up digest, unless told to hold (gate),
    reject or be unreachable for it."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.rejections: dict[str, ImageRejected] = {}
        self.unreachable: dict[str, int] = {}  # reference -> failed attempts still to come
        self.calls: list[str] = []

    async def verify(self, reference: str) -> VerifiedImage:
        self.calls.append(reference)
        gate = self.gates.get(reference)
        if gate is not None:
            await gate.wait()
        if reference in self.rejections:
            raise self.rejections[reference]
        if self.unreachable.get(reference, 0) > 0:
            self.unreachable[reference] -= 1
            raise RegistryUnreachable(f"{reference.split('/')[0]}: connection refused")
        repository, digest = pinned(reference).split("@")
        return VerifiedImage(reference, repository, digest, "enforce", "cosign-key")


class Rig:
    def __init__(self, config: AgentConfig, db: sqlite3.Connection) -> None:
        self.config = config
        self.db = db
        self.reported = ReportedState()
        self.verifier = FakeVerifier()
        self.reconciler = Reconciler(config, ReconcilerStore(db), FakeRuntime())
        self.manager = DesiredStateManager(config, db, self.reported, self.verifier, self.reconciler)
        self.activated: list[CommittedDeployment] = []  # what each commit made current
        apply = self.manager.store.apply

        def recording(transition: Transition) -> None:
            apply(transition)
            if transition.accepted is not None and transition.current is not None:
                self.activated.append(transition.current)

        self.manager.store.apply = recording  # type: ignore[method-assign]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Rig:
        await self.manager.start()
        # Only the pinning loop: the reconciler's passes are handed over by the test (PassResult).
        self.task = asyncio.create_task(self.manager._pin_forever())
        return self

    def current(self) -> CommittedDeployment | None:
        return self.manager.store.current()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        await self.manager.floor_written()  # as the owner's run() does when it stops

    def section(self) -> dict[str, Any]:
        section = self.reported.get("deployment")
        assert isinstance(section, dict)
        return section

    def entry(self, version: int) -> dict[str, Any] | None:
        return self.section()["versions"].get(str(version))

    def state(self, version: int) -> str | None:
        entry = self.entry(version)
        return None if entry is None else entry["state"]

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.task is not None and self.task.done():
                    self.task.result()  # surfaces a crash of run()
                    raise AssertionError(f"run() ended while waiting for {what}")
                await asyncio.sleep(0.005)

    async def until_state(self, version: int, state: str) -> None:
        await self.until(lambda: self.state(version) == state, f"version {version} {state}")

    def dump(self) -> list[str]:
        return list(self.db.iterdump())


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    (tmp_path / "old.pub").write_bytes(pem(OLD))
    return parse_config(
        f'[device]\nid = "unit-dev"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[trust]\ndocument_keys = ["{tmp_path / "old.pub"}"]\n'
    )


@pytest.fixture
async def rig(config: AgentConfig) -> AsyncIterator[Rig]:
    rig = await Rig(config, open_state_db(config.state.dir)).start()
    yield rig
    await rig.stop()


async def accept(rig: Rig, raw: bytes, version: int) -> None:
    assert isinstance(rig.manager.submit(raw), Admitted)
    await rig.until_state(version, "activating")


# --------------------------------------------------------------------------- the normal path


async def test_signed_document_is_verified_pinned_committed_and_handed_over(rig: Rig) -> None:
    gate = rig.verifier.gates["reg.local/pilot:1"] = asyncio.Event()
    raw = signed(1, "reg.local/pilot:1", "reg.local/camera:2.0", properties={"pilot": {"speed": 2}})
    decision = rig.manager.submit(raw)
    assert isinstance(decision, Admitted) and decision.version == 1
    entry = rig.entry(1)
    assert entry is not None and entry["state"] == "verifying" and entry["digest"] == digest_of(raw)
    await rig.until(lambda: "reg.local/pilot:1" in rig.verifier.calls, "verification")
    await asyncio.sleep(0.05)
    assert rig.state(1) == "verifying"  # held by the slow registry: nothing stored yet
    assert rig.current() is None and rig.manager.store.accepted() is None
    assert rig.activated == []

    gate.set()
    await rig.until_state(1, "activating")
    current = rig.current()
    assert current is not None and current.version == 1
    assert current.images == {"pilot": pinned("reg.local/pilot:1"), "camera": pinned("reg.local/camera:2.0")}
    assert all("@sha256:" in ref for ref in current.images.values())
    assert current.document == doc(1, "reg.local/pilot:1", "reg.local/camera:2.0")["deployment"]
    assert rig.manager.store.accepted() == (1, digest_of(raw), raw)  # the exact bytes: signature checkable
    assert rig.activated == [current]
    assert rig.entry(1)["digest"] == digest_of(raw)  # type: ignore[index]
    # The retained copy arriving again changes nothing.
    assert rig.manager.submit(raw) == Duplicate(1)
    await asyncio.sleep(0.05)
    assert len(rig.activated) == 1


async def test_refused_image_rejects_the_version_and_commits_nothing(rig: Rig) -> None:
    await accept(rig, signed(1, "reg.local/pilot:1"), 1)
    accepted_before, current_before = rig.manager.store.accepted(), rig.current()
    rig.verifier.rejections["reg.local/miner:1"] = ImageRejected("reg.local/miner:1", "unsigned", "no signature")
    rig.manager.submit(signed(2, "reg.local/pilot:1", "reg.local/miner:1"))
    await rig.until_state(2, "rejected")
    entry = rig.entry(2)
    assert entry is not None
    assert (entry["code"], entry["module"]) == ("unsigned", "miner")
    assert "reg.local/miner:1" in entry["description"] and "no signature" in entry["description"]
    assert rig.current() == current_before
    assert rig.manager.store.accepted() == accepted_before
    assert len(rig.activated) == 1
    assert rig.section()["current"] == 1 and rig.state(1) == "activating"


async def test_a_document_arriving_during_verification_supersedes_it(rig: Rig) -> None:
    rig.verifier.gates["reg.local/slow:1"] = slow = asyncio.Event()
    rig.manager.submit(signed(1, "reg.local/slow:1"))
    await rig.until(lambda: rig.verifier.calls == ["reg.local/slow:1"], "v1 verifying")
    assert isinstance(rig.manager.submit(signed(2, "reg.local/pilot:2")), Admitted)
    assert rig.state(1) == "superseded"
    assert "version 2" in rig.entry(1)["description"]  # type: ignore[index]
    await rig.until_state(2, "activating")
    slow.set()  # the registry answers for v1 after all: too late, it is not applied
    await asyncio.sleep(0.05)
    assert [d.version for d in rig.activated] == [2]
    current = rig.current()
    assert current is not None and current.version == 2 and rig.manager.store.accepted()[0] == 2  # type: ignore[index]
    assert rig.state(1) == "superseded"


async def test_three_quick_documents_the_newest_wins(rig: Rig) -> None:
    for ref in ("reg.local/a:1", "reg.local/b:1"):
        rig.verifier.gates[ref] = asyncio.Event()
    rig.manager.submit(signed(1, "reg.local/a:1"))
    await rig.until(lambda: "reg.local/a:1" in rig.verifier.calls, "v1 verifying")
    rig.manager.submit(signed(2, "reg.local/b:1"))
    await rig.until(lambda: "reg.local/b:1" in rig.verifier.calls, "v2 verifying")
    rig.manager.submit(signed(3, "reg.local/c:1"))
    await rig.until_state(3, "activating")
    for gate in rig.verifier.gates.values():
        gate.set()
    await asyncio.sleep(0.05)
    assert (rig.state(1), rig.state(2)) == ("superseded", "superseded")
    assert [d.version for d in rig.activated] == [3]


async def test_committing_a_new_version_supersedes_the_one_in_probation(rig: Rig) -> None:
    await accept(rig, signed(1), 1)
    rig.manager.settle(PassResult(1, Probation(2000.0, "stabilisation window")))
    await accept(rig, signed(2, "reg.local/pilot:2"), 2)
    assert rig.state(1) == "superseded" and "version 2" in rig.entry(1)["description"]  # type: ignore[index]


# A version committed but not yet taken by the reconciler (it takes the newest at the start of its
# next pass) must not stay "activating" for ever: the newer commit supersedes it.
async def test_a_committed_version_never_taken_by_the_reconciler_is_superseded(rig: Rig) -> None:
    await accept(rig, signed(1), 1)  # the reconciler has not reported running(1) yet
    await accept(rig, signed(2, "reg.local/pilot:2"), 2)
    assert rig.state(1) == "superseded"


# --------------------------------------------------------------------------- refusals change nothing


async def test_unauthenticated_refusals_change_nothing_but_last_refused(rig: Rig) -> None:
    good = signed(1)
    await accept(rig, good, 1)
    rig.verifier.rejections["reg.local/miner:1"] = ImageRejected("reg.local/miner:1", "unsigned", "no signature")
    rig.manager.submit(signed(2, "reg.local/miner:1"))
    await rig.until_state(2, "rejected")
    before_db, before_section = rig.dump(), rig.section()
    before_keys = rig.manager.trust.keys
    hostile = {
        "unsigned": json.dumps(doc(9007199254740991)).encode(),
        "untrusted_key": signed(9007199254740991, key=EVIL, rotate_to=[pem(EVIL)]),
        "too_deep": b"[" * 10_000 + b"]" * 10_000,
        "invalid_utf8": b'{"version":9007199254740991,"x":"\xff"}',
        "too_large": b'{"version":9007199254740991,"pad":"' + b"x" * 2_000_000 + b'"}',
        "invalid_json": b'{"version":9007199254740991',
    }
    for code, raw in hostile.items():
        decision = rig.manager.submit(raw)
        assert isinstance(decision, Refused) and decision.code == code, decision
        await asyncio.sleep(0.01)
        assert rig.dump() == before_db, code
        section = rig.section()
        refused = section.pop("lastRefused")
        assert refused["code"] == code and refused["digest"] == digest_of(raw)
        assert "version" not in refused
        assert section == {k: v for k, v in before_section.items() if k != "lastRefused"}
        assert rig.manager.trust.keys == before_keys
    # A removed retained document (edgectl removes one the device refused) changes nothing, not
    # even lastRefused: the refusal the fleet reads stays.
    last = rig.section()["lastRefused"]
    cleared = rig.manager.submit(b"")
    assert isinstance(cleared, Refused) and cleared.code == "cleared"
    assert rig.dump() == before_db and rig.section()["lastRefused"] == last
    assert len(rig.activated) == 1
    # The fleet's next version is computed from what the device authenticated: 3 is taken.
    assert isinstance(rig.manager.submit(signed(3)), Admitted)
    await rig.until_state(3, "activating")
    assert rig.section()["highestVersion"] == 3


async def test_authenticated_refusal_reports_its_version_and_stores_nothing(rig: Rig) -> None:
    await accept(rig, signed(5), 5)
    before = rig.dump()
    decision = rig.manager.submit(signed(4, "reg.local/other:1"))
    assert isinstance(decision, Refused) and decision.code == "replayed"
    assert rig.section()["lastRefused"]["version"] == 4
    assert rig.dump() == before and rig.entry(4) is None


# --------------------------------------------------------------------------- key rotation


async def test_rotation_in_a_rejected_document_changes_no_key(rig: Rig) -> None:
    await accept(rig, signed(1), 1)
    rig.verifier.rejections["reg.local/miner:1"] = ImageRejected("reg.local/miner:1", "untrusted_key", "other key")
    rig.manager.submit(signed(2, "reg.local/miner:1", rotate_to=[pem(NEW)]))
    await rig.until_state(2, "rejected")
    assert [k.key_id for k in rig.manager.trust.keys] == [key_id(OLD)]
    assert rig.manager.store.rotated_keys() == () and rig.manager.store.keys_version() is None
    refused = rig.manager.submit(signed(3, key=NEW))
    assert isinstance(refused, Refused) and refused.code == "untrusted_key"
    assert isinstance(rig.manager.submit(signed(3)), Admitted)


async def test_rotation_in_a_superseded_document_changes_no_key(rig: Rig) -> None:
    rig.verifier.gates["reg.local/slow:1"] = asyncio.Event()
    rig.manager.submit(signed(1, "reg.local/slow:1", rotate_to=[pem(NEW)]))
    await rig.until(lambda: rig.verifier.calls == ["reg.local/slow:1"], "v1 verifying")
    await accept(rig, signed(2), 2)
    assert rig.state(1) == "superseded"
    assert [k.key_id for k in rig.manager.trust.keys] == [key_id(OLD)] and rig.manager.store.rotated_keys() == ()


async def test_rotation_is_committed_with_the_accepted_document(rig: Rig, config: AgentConfig) -> None:
    await accept(rig, signed(1), 1)
    rig.manager.submit(signed(2, rotate_to=[pem(NEW)]))
    assert [k.key_id for k in rig.manager.trust.keys] == [key_id(OLD)]  # not while verifying
    await rig.until_state(2, "activating")
    assert [k.key_id for k in rig.manager.trust.keys] == [key_id(NEW)]
    assert [k.key_id for k in rig.manager.store.rotated_keys()] == [key_id(NEW)]
    assert rig.manager.store.keys_version() == 2
    refused = rig.manager.submit(signed(3, key=OLD))
    assert isinstance(refused, Refused) and refused.code == "untrusted_key"
    assert isinstance(rig.manager.submit(signed(3, key=NEW)), Admitted)
    await rig.until_state(3, "activating")
    await rig.stop()
    # A restart keeps the rotated keys while the config's keys are unchanged.
    again = await Rig(config, rig.db).start()
    try:
        assert [k.key_id for k in again.manager.trust.keys] == [key_id(NEW)]
    finally:
        await again.stop()


async def test_editing_the_config_keys_resets_a_rotation(rig: Rig, config: AgentConfig, tmp_path: Path) -> None:
    await accept(rig, signed(1, rotate_to=[pem(NEW)]), 1)
    await rig.stop()
    (tmp_path / "evil.pub").write_bytes(pem(EVIL))
    reprovisioned = config.model_copy(
        update={"trust": config.trust.model_copy(update={"document_keys": [tmp_path / "evil.pub"]})}
    )
    again = await Rig(reprovisioned, rig.db).start()
    try:
        assert [k.key_id for k in again.manager.trust.keys] == [key_id(EVIL)]
        assert again.manager.store.rotated_keys() == ()
    finally:
        await again.stop()


# --------------------------------------------------------------------------- the registry comes and goes


@pytest.mark.parametrize("failure", ["exception", "rejected_code"])
async def test_unreachable_registry_keeps_verifying_then_commits(
    config: AgentConfig, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    monkeypatch.setattr(manager_module, "PIN_RETRY", (0.01, 0.04))
    rig = await Rig(config, open_state_db(config.state.dir)).start()
    try:
        ref = "reg.local/pilot:1"
        if failure == "exception":
            rig.verifier.unreachable[ref] = 10**9
        else:
            rig.verifier.rejections[ref] = ImageRejected(ref, "registry_unreachable", "timed out")
        rig.manager.submit(signed(1, ref))
        await rig.until(lambda: rig.verifier.calls.count(ref) >= 6, "retries")
        entry = rig.entry(1)
        assert entry is not None and entry["state"] == "verifying" and entry["module"] == "pilot"
        assert "not verified yet, trying again" in entry["description"] and "next at" in entry["description"]
        assert entry["code"] == "registry_unreachable"
        pin_failure = rig.manager.retries.get("pin")
        assert pin_failure is not None and pin_failure.attempts >= 5 and pin_failure.delay == 0.04  # capped
        assert rig.current() is None and rig.activated == []
        # the registry is back
        rig.verifier.unreachable[ref] = 0
        rig.verifier.rejections.clear()
        await rig.until_state(1, "activating")
        assert rig.current().images == {"pilot": pinned(ref)}  # type: ignore[union-attr]
        assert [d.version for d in rig.activated] == [1]
        assert rig.manager.retries.get("pin") is None
    finally:
        await rig.stop()


async def test_retries_back_off(config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "PIN_RETRY", (0.05, 0.2))
    rig = await Rig(config, open_state_db(config.state.dir)).start()
    try:
        rig.verifier.unreachable["reg.local/pilot:1"] = 10**9
        start = time.monotonic()
        rig.manager.submit(signed(1))
        await rig.until(lambda: len(rig.verifier.calls) >= 4, "four attempts", 30)
        # waits of 0.05 + 0.1 + 0.2 s between them at least (a sleep is never shorter), not one per loop turn
        assert time.monotonic() - start >= 0.35, rig.verifier.calls
    finally:
        await rig.stop()


# --------------------------------------------------------------------------- restart


async def test_restart_keeps_statuses_drops_verifying_and_still_refuses_replays(config: AgentConfig) -> None:
    db = open_state_db(config.state.dir)
    first = await Rig(config, db).start()
    v1 = signed(1)
    await accept(first, v1, 1)
    first.manager.settle(PassResult(1, Good()))
    first.verifier.rejections["reg.local/miner:1"] = ImageRejected("reg.local/miner:1", "unsigned", "no signature")
    v2 = signed(2, "reg.local/miner:1")
    first.manager.submit(v2)
    await first.until_state(2, "rejected")
    first.verifier.gates["reg.local/slow:1"] = asyncio.Event()
    v3 = signed(3, "reg.local/slow:1")
    first.manager.submit(v3)
    await first.until(lambda: "reg.local/slow:1" in first.verifier.calls, "v3 verifying")
    await first.stop()

    second = await Rig(config, open_state_db(config.state.dir)).start()  # the same state.db, reopened
    try:
        section = second.section()
        assert set(section["versions"]) == {"1", "2"}  # the verifying one was cut short: dropped
        assert section["versions"]["1"]["state"] == "good" and section["versions"]["2"]["code"] == "unsigned"
        assert (section["current"], section["lastKnownGood"]) == (1, 1)
        refused = second.manager.submit(signed(1, "reg.local/other:1"))
        assert isinstance(refused, Refused) and refused.code == "replayed"
        assert second.manager.submit(v2) == Duplicate(2)  # the rejected version is not retried
        assert isinstance(second.manager.submit(v1), Refused)  # older than 2, the newest it saw
        # The retained v3 is delivered again and verified from the start.
        assert isinstance(second.manager.submit(v3), Admitted)
        await second.until_state(3, "activating")
        assert [d.version for d in second.activated] == [3]
    finally:
        await second.stop()


async def test_a_state_db_from_before_per_version_status_is_adopted(config: AgentConfig) -> None:
    db = open_state_db(config.state.dir)
    StateStore(db)._put_slot("current", CommittedDeployment(3, doc(3)["deployment"],
                                                            {"pilot": pinned("reg.local/pilot:1")}, 100.0))
    rig = await Rig(config, db).start()
    try:
        assert rig.section()["current"] == 3 and rig.state(3) == "activating"
        refused = rig.manager.submit(signed(2))
        assert isinstance(refused, Refused) and refused.code == "replayed"  # the replay check knows version 3
        assert isinstance(rig.manager.submit(signed(4)), Admitted)
    finally:
        await rig.stop()


async def test_after_an_upgrade_the_retained_current_document_is_a_duplicate(config: AgentConfig) -> None:
    """A state.db written by the release before per-version status: the twin stored the accepted
    document (and its digest) in twin_desired. The broker's retained copy of that document is
    recognised after the upgrade, not refused as a replay (state_schema.py folds the table into
    desired_accepted when the file is opened)."""
    raw = signed(3)
    config.state.dir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(config.state.dir / "state.db")) as old, old:
        old.execute("CREATE TABLE twin_desired (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, "
                    "digest TEXT NOT NULL, payload BLOB NOT NULL, accepted_at REAL NOT NULL)")
        old.execute("INSERT INTO twin_desired VALUES (1, 3, ?, ?, 100.0)", (digest_of(raw), raw))
    db = open_state_db(config.state.dir)
    StateStore(db)._put_slot("current", CommittedDeployment(3, doc(3)["deployment"],
                                                            {"pilot": pinned("reg.local/pilot:1")}, 100.0))
    rig = await Rig(config, db).start()
    try:
        assert isinstance(rig.manager.submit(raw), Duplicate)
        assert rig.section()["lastRefused"] is None
        replay = rig.manager.submit(signed(3, "reg.local/pilot:9"))  # another document as version 3
        assert isinstance(replay, Refused) and replay.code == "replayed"
    finally:
        await rig.stop()


# --------------------------------------------------------------------------- what the reconciler reports


async def test_pass_results_appear_in_the_reported_section(rig: Rig, config: AgentConfig) -> None:
    await accept(rig, signed(1), 1)
    rig.manager.settle(PassResult(1, Probation(0.0, "stabilisation window")))
    assert rig.entry(1)["state"] == "probation" and "good at 1970" in rig.entry(1)["description"]  # type: ignore[index]
    rig.manager.settle(PassResult(1, Good()))
    assert (rig.section()["current"], rig.section()["lastKnownGood"], rig.state(1)) == (1, 1, "good")
    rig.manager.settle(PassResult(1, Failed("pilot", "exited", code="crashloop")))  # a good version never goes back
    assert rig.state(1) == "good" and rig.current().version == 1  # type: ignore[union-attr]
    rig.manager.settle(PassResult(42, Good()))  # not the current version: dropped
    assert rig.entry(42) is None and rig.section()["lastKnownGood"] == 1

    await accept(rig, signed(2, "reg.local/pilot:2"), 2)
    rig.manager.settle(PassResult(2, Failed("pilot", "exited 5 times", code="crashloop")))
    # Durable at once; reported with the pass that acts on the return to version 1.
    assert rig.current().version == 1 and rig.manager.report_held  # type: ignore[union-attr]
    assert rig.section()["current"] == 2 and rig.state(2) == "activating"
    rig.manager.settle(PassResult(1, Settled(), modules={}))
    assert not rig.manager.report_held
    entry = rig.entry(2)
    assert entry is not None
    assert (entry["state"], entry["code"], entry["module"]) == ("rolled_back", "crashloop", "pilot")
    assert rig.section()["current"] == 1 and rig.current().version == 1  # type: ignore[union-attr]

    rig.manager.settle(PassResult(1, None, runtime_error="podman: connection refused"))
    assert rig.section()["error"] == "podman: connection refused"
    rig.manager.settle(PassResult(1, None))
    assert "error" not in rig.section()

    # Persisted: a restarted manager reports the same.
    await rig.stop()
    again = await Rig(config, rig.db).start()
    try:
        assert again.state(1) == "good" and again.state(2) == "rolled_back"
    finally:
        await again.stop()


# --------------------------------------------------------------------------- storage failures


async def test_a_document_that_cannot_be_stored_is_not_applied_and_is_stored_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rig.manager.retries, "initial_s", 0.05)
    await accept(rig, signed(1), 1)
    rig.db.execute("PRAGMA query_only = ON")  # stands in for a full or read-only disk
    try:
        rig.manager.submit(signed(2, "reg.local/pilot:2"))
        await rig.until(lambda: (rig.entry(2) or {}).get("code") == "store_failed", "store_failed reported")
        assert rig.state(2) == "verifying" and "cannot store the document" in rig.entry(2)["description"]  # type: ignore[index]
        assert rig.current().version == 1  # type: ignore[union-attr]
        assert [d.version for d in rig.activated] == [1]
    finally:
        rig.db.execute("PRAGMA query_only = OFF")
    # The disk recovers: the document was kept and is committed now, not lost.
    await rig.until_state(2, "activating")
    assert rig.current().version == 2  # type: ignore[union-attr]
    assert [d.version for d in rig.activated] == [1, 2]


async def test_an_unexpected_verifier_error_rejects_the_version_and_keeps_running(rig: Rig) -> None:
    class Broken(FakeVerifier):
        async def verify(self, reference: str) -> VerifiedImage:
            if reference == "reg.local/broken:1":
                raise KeyError("digest")
            return await super().verify(reference)

    rig.manager.verifier = Broken()
    rig.manager.submit(signed(1, "reg.local/broken:1"))
    await rig.until_state(1, "rejected")
    entry = rig.entry(1)
    assert entry is not None and entry["code"] == "internal_error" and "KeyError" in entry["description"]
    assert rig.current() is None
    await accept(rig, signed(2), 2)  # the room still works
    assert [d.version for d in rig.activated] == [2]


async def test_the_commit_is_one_transaction(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    await accept(rig, signed(1), 1)
    rig.reconciler.store.set_restart("pilot", RestartState(2, 5.0, 2))

    def tables() -> list[list[Any]]:
        return [rig.db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("desired_accepted", "deployment_slots", "deployment_restarts", "trust_document_keys",
                          "meta")]

    before = tables()

    def disk_error(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    # The last write of the commit fails: the accepted document, the current slot and the cleared
    # restart counters written before it in the same transaction are rolled back.
    monkeypatch.setattr(type(rig.manager.store), "_install_keys", disk_error)
    rig.manager.submit(signed(2, "reg.local/pilot:2", rotate_to=[pem(NEW)]))
    await rig.until(lambda: (rig.entry(2) or {}).get("code") == "store_failed", "store_failed reported")
    assert rig.state(2) == "verifying"
    assert tables() == before
    assert [k.key_id for k in rig.manager.trust.keys] == [key_id(OLD)]
    assert [d.version for d in rig.activated] == [1]


async def test_the_commit_is_one_transaction_up_to_its_last_write(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stores write through sqlite-utils: its writes join the commit's transaction (as
    savepoints), so a failure after the key rotation and the status rows undoes them too."""
    await accept(rig, signed(1), 1)
    rig.reconciler.store.set_restart("pilot", RestartState(2, 5.0, 2))
    before = list(rig.db.iterdump())

    def disk_error(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(type(rig.manager.store), "_prune", disk_error)  # the commit's last step
    rig.manager.submit(signed(2, "reg.local/pilot:2", rotate_to=[pem(NEW)]))
    await rig.until(lambda: (rig.entry(2) or {}).get("code") == "store_failed", "store_failed reported")
    assert list(rig.db.iterdump()) == before
    assert not rig.db.in_transaction
    assert [k.key_id for k in rig.manager.trust.keys] == [key_id(OLD)]
    assert [d.version for d in rig.activated] == [1]


async def test_memory_holds_the_version_rows_state_db_holds(rig: Rig) -> None:
    """The room prunes its rows as the store prunes state.db, so what each document costs (its
    report, the supersede scan) does not grow with the device's history."""
    for version in range(1, STORED_VERSIONS + 6):
        await accept(rig, signed(version, f"reg.local/pilot:{version}"), version)
    stored = {s.version: s for s in rig.manager.store.versions()}
    assert set(rig.manager.statuses) == set(stored) == set(range(6, STORED_VERSIONS + 6))
    assert rig.manager.statuses == stored


async def test_an_accepted_document_writes_three_pages(rig: Rig) -> None:
    """The document, the `current` slot and the status rows: one page each in the WAL (clearing
    the empty restart counters writes none)."""
    await accept(rig, signed(1), 1)
    rig.db.execute("PRAGMA wal_autocheckpoint=0")
    rig.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = rig.config.state.dir / "state.db-wal"
    assert wal.stat().st_size == 0
    raw = signed(2, "reg.local/pilot:2")
    await accept(rig, raw, 2)
    frame = 24 + int(rig.db.execute("PRAGMA page_size").fetchone()[0])
    assert (wal.stat().st_size - 32) // frame == 3
    assert rig.manager.store.accepted() == (2, digest_of(raw), raw) == StateStore(rig.db).accepted()


# --------------------------------------------------------------------------- local deploy (control socket)


async def test_local_deploy_goes_through_the_same_gate_without_the_signature(
    rig: Rig, config: AgentConfig
) -> None:
    with pytest.raises(CommandError, match="local deploys are off"):
        await rig.manager._cmd_deploy({"version": 1, "deployment": doc(1)["deployment"]})
    rig.manager.config = config.model_copy(
        update={"deployment": config.deployment.model_copy(update={"local_deploy": True})}
    )
    answer = await rig.manager._cmd_deploy({"version": 1, "deployment": doc(1)["deployment"]})
    assert answer["admitted"] == 1
    await rig.until_state(1, "activating")
    with pytest.raises(CommandError, match="replayed"):
        await rig.manager._cmd_deploy({"version": 1, "deployment": doc(1, "reg.local/x:1")["deployment"]})
    with pytest.raises(CommandError, match="invalid_deployment"):
        await rig.manager._cmd_deploy({"version": 2, "deployment": {"modules": []}})
    with pytest.raises(CommandError, match="expected"):
        await rig.manager._cmd_deploy({"deployment": {}})
