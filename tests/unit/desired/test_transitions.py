"""Every change of the deployment state (desired/transitions.py, pure) and the one writer
(desired/store.py: StateStore.apply checks what a transition replaces)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.deployment.pinned import CommittedDeployment
from edge_agent.deployment.reconciler import PassResult
from edge_agent.deployment.rollback import Failed, Good, Probation, Settled
from edge_agent.desired import transitions
from edge_agent.desired.status import VersionStatus
from edge_agent.desired.store import Accepted, StaleTransition, StateStore, Transition
from edge_agent.store import open_state_db
from edge_shared.outcome import State

WINDOW = 30.0


def dep(version: int, at: float = 100.0) -> CommittedDeployment:
    return CommittedDeployment(version, {"modules": {}}, {}, at)


def row(version: int, state: State) -> VersionStatus:
    return VersionStatus(version, f"d{version}", state, 1.0)


def rows(*pairs: tuple[int, State]) -> dict[int, VersionStatus]:
    return {v: row(v, s) for v, s in pairs}


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(open_state_db(tmp_path / "state"))


# --------------------------------------------------------------------------- pure


def test_commit_makes_it_current_and_supersedes_the_active_ones() -> None:
    statuses = rows((1, State.GOOD), (2, State.PROBATION), (3, State.VERIFYING))
    t = transitions.commit(statuses, dep(2), dep(1), dep(3, 200.0), Accepted(b"raw", "d3"), statuses[3])
    assert (t.expect_current, t.expect_last_known_good) == (2, 1)
    assert t.current == dep(3, 200.0) and t.last_known_good is None
    assert {(r.version, r.state) for r in t.statuses} == {(3, State.ACTIVATING), (2, State.SUPERSEDED)}


def test_a_verdict_about_a_replaced_version_is_dropped() -> None:
    """The race of issue 24: a pass over version 2 ends after version 3 was committed."""
    statuses = rows((1, State.GOOD), (2, State.SUPERSEDED), (3, State.ACTIVATING))
    result = PassResult(2, Failed("app", "exited with code 3"))
    assert transitions.after_pass(statuses, dep(3), dep(1), result, 500.0, WINDOW) is None
    assert transitions.after_pass(statuses, dep(3), dep(1), PassResult(2, Good()), 500.0, WINDOW) is None


def test_a_failure_with_a_good_version_to_return_to_is_a_compare_and_swap_rollback() -> None:
    statuses = rows((1, State.GOOD), (2, State.PROBATION))
    t = transitions.after_pass(statuses, dep(2), dep(1), PassResult(2, Failed("app", "exited with code 3")),
                               500.0, WINDOW)
    assert t is not None
    assert (t.expect_current, t.expect_last_known_good) == (2, 1)  # only if 2 is still current
    assert t.current == CommittedDeployment(1, {"modules": {}}, {}, 500.0) and t.last_known_good is None
    (r,) = t.statuses
    assert (r.version, r.state, r.module, r.code) == (2, State.ROLLED_BACK, "app", "module_failed")
    assert "version 1 runs again" in r.description


def test_a_failure_without_a_good_version_keeps_it_running() -> None:
    statuses = rows((1, State.ACTIVATING))
    t = transitions.after_pass(statuses, dep(1), None, PassResult(1, Failed("app", "boom")), 500.0, WINDOW)
    assert t is not None and t.current is None
    assert [(r.version, r.state) for r in t.statuses] == [(1, State.FAILED)]
    # Judged again by the next pass: nothing more to write.
    failed = {1: t.statuses[0]}
    assert transitions.after_pass(failed, dep(1), None, PassResult(1, Failed("app", "boom")), 501.0, WINDOW) is None


def test_good_makes_it_last_known_good() -> None:
    statuses = rows((1, State.GOOD), (2, State.PROBATION))
    t = transitions.after_pass(statuses, dep(2), dep(1), PassResult(2, Good()), 500.0, WINDOW)
    assert t is not None and t.last_known_good == dep(2) and t.current is None
    assert [(r.version, r.state) for r in t.statuses] == [(2, State.GOOD)]


def test_probation_and_activating_are_status_updates_only() -> None:
    statuses = rows((2, State.ACTIVATING))
    t = transitions.after_pass(statuses, dep(2), None, PassResult(2, Probation(530.0, "window")), 500.0, WINDOW)
    assert t is not None and t.current is None and t.last_known_good is None
    assert t.statuses[0].state == State.PROBATION
    assert transitions.after_pass(rows((1, State.GOOD)), dep(1), dep(1), PassResult(1, Settled()), 1.0, WINDOW) is None
    down = PassResult(2, None, runtime_error="down")
    assert transitions.after_pass(statuses, dep(2), None, down, 1.0, WINDOW) is None


@pytest.mark.parametrize(
    ("statuses", "current", "lkg", "expected"),
    [
        # current on probation, not yet good: the pass judges it again (nothing to recover)
        (rows((1, State.GOOD), (2, State.PROBATION)), 2, 1, {}),
        # current is last-known-good but its row says probation (a crash of an older release
        # between the two writes): good
        (rows((1, State.PROBATION)), 1, 1, {1: State.GOOD}),
        # a version left active but no longer current, older: superseded
        (rows((1, State.ACTIVATING), (2, State.ACTIVATING)), 2, None, {1: State.SUPERSEDED}),
        # newer than current, and current went back to last-known-good: a rollback
        (rows((1, State.GOOD), (2, State.PROBATION)), 1, 1, {2: State.ROLLED_BACK}),
        # a current version without a row (state from before per-version status)
        ({}, 3, None, {3: State.ACTIVATING}),
        ({}, 3, 3, {3: State.GOOD}),
    ],
)
def test_recovery_at_boot_leaves_no_version_with_nothing_to_do(
    statuses: dict[int, VersionStatus], current: int, lkg: int | None, expected: dict[int, State]
) -> None:
    t = transitions.recover(statuses, dep(current), dep(lkg) if lkg else None, "digest", 900.0)
    got = {r.version: r.state for r in t.statuses} if t is not None else {}
    assert got == expected
    if t is not None:
        assert t.current is None and t.last_known_good is None  # recovery only ends versions
        after = {**statuses, **{r.version: r for r in t.statuses}}
        active = [v for v, s in after.items() if s.state in (State.ACTIVATING, State.PROBATION)]
        assert set(active) <= {current}


# --------------------------------------------------------------------------- the one writer


def test_apply_refuses_a_transition_computed_from_another_state(store: StateStore) -> None:
    store.apply(Transition("commit 1", None, None, current=dep(1), statuses=(row(1, State.ACTIVATING),),
                           accepted=Accepted(b"one", "d1")))
    store.apply(Transition("1 good", 1, None, last_known_good=dep(1), statuses=(row(1, State.GOOD),)))
    store.apply(Transition("commit 3", 1, 1, current=dep(3), statuses=(row(3, State.ACTIVATING),),
                           accepted=Accepted(b"three", "d3")))
    before = list(store.db.iterdump())
    # A rollback of version 2 computed before 3 was committed: refused, nothing written.
    blind = Transition("2 failed: back to 1", 2, 1, current=dep(1), statuses=(row(2, State.ROLLED_BACK),))
    with pytest.raises(StaleTransition, match="expected current/last-known-good"):
        store.apply(blind)
    assert list(store.db.iterdump()) == before
    assert store.current() == dep(3) and store.accepted() == (3, "d3", b"three")


def test_apply_is_one_transaction(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply(Transition("commit 1", None, None, current=dep(1), statuses=(row(1, State.ACTIVATING),),
                           accepted=Accepted(b"one", "d1")))
    before = list(store.db.iterdump())

    def disk_full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(StateStore, "_prune", disk_full)  # the last write of every transition
    with pytest.raises(sqlite3.OperationalError):
        store.apply(Transition("1 good", 1, None, last_known_good=dep(1), statuses=(row(1, State.GOOD),)))
    assert list(store.db.iterdump()) == before and not store.db.in_transaction


def test_the_store_keeps_the_accepted_document_as_it_writes_it_and_reads_it_again_after_a_failure(
    store: StateStore,
) -> None:
    assert store.accepted() is None
    v1 = VersionStatus(1, "d1", State.VERIFYING, 1.0)
    store.apply(transitions.commit({1: v1}, None, None, dep(1), Accepted(b"raw1", "d1"), v1))
    assert store.accepted() == (1, "d1", b"raw1") == StateStore(store.db).accepted()
    v2 = VersionStatus(2, "d2", State.VERIFYING, 1.0)
    stale = transitions.commit({2: v2}, None, None, dep(2), Accepted(b"raw2", "d2"), v2)  # computed from nothing
    with pytest.raises(StaleTransition):
        store.apply(stale)
    assert store.accepted() == (1, "d1", b"raw1")
    # Written behind the store's back (not how the agent writes): a failed apply reads it again.
    store.db.execute("UPDATE desired_accepted SET payload = ?", (b"other",))
    with pytest.raises(StaleTransition):
        store.apply(stale)
    assert store.accepted() == (1, "d1", b"other")
