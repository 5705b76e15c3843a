"""The per-version state machine, the reported `deployment` section and `edgectl deploy --wait`'s
reading of it (edge_agent/desired/status.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edge_agent.desired.status import (
    KEEP_VERSIONS,
    NEXT_STATES,
    STORED_VERSIONS,
    Refusal,
    VersionStatus,
    advance,
    deployment_section,
    pruned,
)
from edge_shared.outcome import State, wait_outcome

S = State
# Written out rather than read from NEXT_STATES, so a change of the machine shows up here.
ALLOWED = {
    (S.VERIFYING, S.REJECTED),
    (S.VERIFYING, S.SUPERSEDED),
    (S.VERIFYING, S.ACTIVATING),
    (S.ACTIVATING, S.PROBATION),
    (S.ACTIVATING, S.GOOD),
    (S.ACTIVATING, S.FAILED),
    (S.ACTIVATING, S.ROLLED_BACK),
    (S.ACTIVATING, S.SUPERSEDED),
    (S.PROBATION, S.GOOD),
    (S.PROBATION, S.FAILED),
    (S.PROBATION, S.ROLLED_BACK),
    (S.PROBATION, S.SUPERSEDED),
}
TERMINAL = {S.GOOD, S.REJECTED, S.SUPERSEDED, S.FAILED, S.ROLLED_BACK}
PAIRS = [(a, b) for a in State for b in State if a != b]


def status(state: State, version: int = 3, **kw: Any) -> VersionStatus:
    return VersionStatus(version, "d" * 64, state, 1.0, **kw)


def test_the_table_matches_the_documented_machine() -> None:
    assert {(a, b) for a, nexts in NEXT_STATES.items() for b in nexts} == ALLOWED
    assert set(NEXT_STATES) == set(State)
    assert {s for s in State if not NEXT_STATES[s]} == TERMINAL


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED))
def test_allowed_transition(src: State, dst: State) -> None:
    moved = advance(status(src), dst, 5.0, code="c", module="m", description="why")
    assert moved == VersionStatus(3, "d" * 64, dst, 5.0, "c", "m", "why")


@pytest.mark.parametrize(("src", "dst"), [p for p in PAIRS if p not in ALLOWED])
def test_refused_transition(src: State, dst: State) -> None:
    assert advance(status(src), dst, 5.0, code="c", module="m", description="why") is None


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_are_final(terminal: State) -> None:
    for dst in State:
        if dst != terminal:
            assert advance(status(terminal), dst, 9.0) is None


def test_same_state_is_an_update_only_when_something_changed() -> None:
    base = status(S.VERIFYING, description="verifying module images")
    assert advance(base, S.VERIFYING, 7.0, description="verifying module images") is None
    updated = advance(base, S.VERIFYING, 7.0, module="pilot", description="registry unreachable")
    assert updated is not None
    assert (updated.state, updated.module, updated.description) == (S.VERIFYING, "pilot", "registry unreachable")
    assert updated.at == 1.0  # still the time it entered the state
    assert advance(status(S.GOOD), S.GOOD, 7.0) is None  # nothing new: no write


# --------------------------------------------------------------------------- the reported section


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def test_section_keeps_the_newest_versions_plus_current_and_lkg() -> None:
    versions = [VersionStatus(v, f"{v:064x}", S.REJECTED, float(v)) for v in range(1, 16)]
    section = deployment_section(
        current=2, last_known_good=1, versions=reversed(versions), last_refused=None, max_document_bytes=4096
    )
    newest = set(range(16 - KEEP_VERSIONS, 16))
    assert set(section["versions"]) == {str(v) for v in newest | {1, 2}}
    assert list(section["versions"]) == [str(v) for v in sorted(newest | {1, 2}, reverse=True)]  # newest first
    assert section["current"] == 2 and section["lastKnownGood"] == 1 and section["highestVersion"] == 15
    assert section["maxDocumentBytes"] == 4096 and section["lastRefused"] is None and "error" not in section
    assert section["versions"]["15"] == {"state": "rejected", "digest": f"{15:064x}", "since": iso(15.0)}


def test_section_without_current_or_lkg_keeps_exactly_keep_versions() -> None:
    versions = [VersionStatus(v, "d", S.SUPERSEDED, 0.0) for v in range(1, KEEP_VERSIONS + 5)]
    section = deployment_section(
        current=None, last_known_good=None, versions=versions, last_refused=None, max_document_bytes=1
    )
    assert len(section["versions"]) == KEEP_VERSIONS and "1" not in section["versions"]


def test_the_newest_version_reported_is_never_below_the_replay_floor() -> None:
    """After an agent roll-back restored an older state.db, the floor (document-trust.json) is newer
    than any version state.db holds: the fleet's next version must be above it."""
    versions = [VersionStatus(v, "d", S.SUPERSEDED, 0.0) for v in (3, 4)]
    section = deployment_section(current=4, last_known_good=4, versions=versions, last_refused=None,
                                 max_document_bytes=1, floor=6)
    assert section["highestVersion"] == 6
    section = deployment_section(current=4, last_known_good=4, versions=versions, last_refused=None,
                                 max_document_bytes=1, floor=2)
    assert section["highestVersion"] == 4
    section = deployment_section(current=None, last_known_good=None, versions=[], last_refused=None,
                                 max_document_bytes=1, floor=None)
    assert section["highestVersion"] is None


def test_section_with_no_versions() -> None:
    section = deployment_section(current=4, last_known_good=None, versions=[], last_refused=None,
                                 max_document_bytes=1, error="podman: connection refused")
    assert section["highestVersion"] == 4 and section["versions"] == {}
    assert section["error"] == "podman: connection refused"


def test_status_entry_carries_code_module_description() -> None:
    entry = deployment_section(
        current=None, last_known_good=None, max_document_bytes=1, last_refused=None,
        versions=[status(S.REJECTED, code="unsigned", module="pilot", description="image reg.local/pilot:1")],
    )["versions"]["3"]
    assert entry == {"state": "rejected", "digest": "d" * 64, "since": iso(1.0), "code": "unsigned",
                     "module": "pilot", "description": "image reg.local/pilot:1"}


def test_last_refused_shows_a_version_only_when_given() -> None:
    unauthenticated = Refusal("a" * 64, "unsigned", "not signed", 10.0)
    section = deployment_section(current=None, last_known_good=None, versions=[], last_refused=unauthenticated,
                                 max_document_bytes=1)
    assert section["lastRefused"] == {"digest": "a" * 64, "code": "unsigned", "description": "not signed",
                                      "at": iso(10.0)}
    authenticated = Refusal("b" * 64, "replayed", "old", 11.0, version=4)
    section = deployment_section(current=None, last_known_good=None, versions=[], last_refused=authenticated,
                                 max_document_bytes=1)
    assert section["lastRefused"]["version"] == 4 and section["lastRefused"]["code"] == "replayed"


# --------------------------------------------------------------------------- wait_outcome

R, F, P = "reached", "failed", "pending"
# target -> state -> outcome, written out
EXPECTED = {
    "admitted": {S.VERIFYING: R, S.ACTIVATING: R, S.PROBATION: R, S.GOOD: R},
    "accepted": {S.VERIFYING: P, S.ACTIVATING: R, S.PROBATION: R, S.GOOD: R},
    "running": {S.VERIFYING: P, S.ACTIVATING: P, S.PROBATION: R, S.GOOD: R},
    "good": {S.VERIFYING: P, S.ACTIVATING: P, S.PROBATION: P, S.GOOD: R},
}
for _target in EXPECTED.values():
    _target.update({S.REJECTED: F, S.SUPERSEDED: F, S.FAILED: F, S.ROLLED_BACK: F})
DIGEST = "c" * 64


def section_with(state: State, **entry: Any) -> dict[str, Any]:
    return {"versions": {"5": {"state": str(state), "digest": DIGEST, **entry}}, "lastRefused": None}


@pytest.mark.parametrize(
    ("target", "state"), [(t, s) for t in EXPECTED for s in State]
)
def test_wait_outcome_for_every_target_and_state(target: str, state: State) -> None:
    outcome, reason = wait_outcome(section_with(state), 5, DIGEST, target)
    assert outcome == EXPECTED[target][state]
    assert reason.startswith(str(state))


def test_failure_reason_names_code_module_and_description() -> None:
    section = section_with(S.ROLLED_BACK, code="crashloop", module="pilot", description="exited 3 times")
    assert wait_outcome(section, 5, DIGEST, "good") == (
        "failed", "rolled_back: crashloop: module pilot: exited 3 times"
    )
    assert wait_outcome(section_with(S.SUPERSEDED), 5, DIGEST, "running") == ("failed", "superseded")


def test_pending_reason_includes_the_description() -> None:
    section = section_with(S.VERIFYING, description="registry unreachable")
    assert wait_outcome(section, 5, DIGEST, "accepted") == ("pending", "verifying (registry unreachable)")


def test_refused_by_digest_wins() -> None:
    section = {"versions": {}, "lastRefused": {"digest": DIGEST, "code": "expired", "description": "too late"}}
    assert wait_outcome(section, 5, DIGEST, "admitted") == ("failed", "refused: expired: too late")
    # Someone else's refused document is not ours.
    assert wait_outcome(section, 5, "e" * 64, "admitted") == (
        "pending", "not received yet (its last report: no deployment)")


@pytest.mark.parametrize("state", list(State))
def test_a_different_digest_under_the_same_version_is_not_ours(state: State) -> None:
    # Another document holds the version: ours is not reported (yet; the device refuses it as a
    # replay, by its digest, and then it fails through lastRefused).
    assert wait_outcome(section_with(state), 5, "e" * 64, "admitted") == (
        "pending", "the device's version 5 is another document"
    )
    refused = section_with(state) | {"lastRefused": {"digest": "e" * 64, "code": "replayed", "description": "old"}}
    assert wait_outcome(refused, 5, "e" * 64, "admitted") == ("failed", "refused: replayed: old")


@pytest.mark.parametrize(("section", "words"), [
    (None, "not reported yet"),
    ({}, "not reported yet"),
    ({"versions": {"4": {"state": "good", "digest": DIGEST}}}, "not received yet (its last report: no deployment)"),
    ({"versions": None, "lastRefused": None}, "not received yet (its last report: no deployment)"),
    # a device that reported before it went offline: its last report is what it ran
    ({"current": 4, "versions": {"4": {"state": "good", "digest": DIGEST}}},
     "not received yet (its last report: version 4 good)"),
    ({"current": 4, "versions": {}}, "not received yet (its last report: version 4)"),
])
def test_a_version_not_reported_says_what_was(section: Any, words: str) -> None:
    assert wait_outcome(section, 5, DIGEST, "good") == ("pending", words)


def test_unknown_state_from_a_newer_agent_is_pending() -> None:
    section = {"versions": {"5": {"state": "hibernating", "digest": DIGEST}}}
    assert wait_outcome(section, 5, DIGEST, "good") == ("pending", "unknown state 'hibernating'")


# ------------------------------------------------- a document that names an agent release


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ({"running": "1.1", "wanted": "1.1", "state": "idle"}, ("reached", "good; agent 1.1 runs")),
        # Runs, but is still on trial (its soak): it may yet hang and be rolled back.
        ({"running": "1.1", "wanted": "1.1", "state": "trial", "detail": "agent 1.1 running its soak",
          "trial": {"version": "1.1", "starts": 1}},
         ("pending", "good; agent update to 1.1: trial (agent 1.1 running its soak)")),
        ({"running": "1.0", "wanted": "1.1", "state": "installing", "detail": "agent 1.1 from x"},
         ("pending", "good; agent update to 1.1: installing (agent 1.1 from x)")),
        ({}, ("pending", "good; agent update to 1.1: not reported")),
        ({"running": "1.0", "wanted": "1.1", "state": "refused", "detail": "agent 1.1: rolled back before: crash"},
         ("failed", "agent update refused: agent 1.1: rolled back before: crash")),
        ({"running": "1.0", "wanted": "1.1", "state": "idle",
          "last": {"result": "rolled_back", "version": "1.1", "reason": "not confirmed within 300s"}},
         ("failed", "agent 1.1 rolled_back: not confirmed within 300s")),
        # An older roll-back of another version says nothing about this one.
        ({"running": "1.0", "wanted": "1.1", "state": "restarting",
          "last": {"result": "rolled_back", "version": "0.9", "reason": "x"}},
         ("pending", "good; agent update to 1.1: restarting")),
    ],
)
def test_good_waits_for_the_agent_release_the_document_names(update: dict, expected: tuple[str, str]) -> None:  # type: ignore[type-arg]
    assert wait_outcome(section_with(S.GOOD), 5, DIGEST, "good", agent="1.1", agent_update=update) == expected


def test_the_agent_release_matters_only_for_good() -> None:
    update = {"running": "1.0", "wanted": "1.1", "state": "refused", "detail": "x"}
    running = wait_outcome(section_with(S.PROBATION), 5, DIGEST, "running", agent="1.1", agent_update=update)
    assert running[0] == "reached"
    assert wait_outcome(section_with(S.GOOD), 5, DIGEST, "good", agent=None, agent_update=update)[0] == "reached"
    assert wait_outcome(section_with(S.PROBATION), 5, DIGEST, "good", agent="1.1", agent_update=update)[0] == "pending"


def test_pruned_keeps_the_stored_number_of_newest_rows_plus_current_and_lkg() -> None:
    rows = {v: VersionStatus(v, "d", S.SUPERSEDED, 0.0) for v in range(1, STORED_VERSIONS + 8)}
    kept = pruned(rows, 2, 1)
    assert set(kept) == set(range(8, STORED_VERSIONS + 8)) | {1, 2}
    assert all(kept[v] is rows[v] for v in kept)
    assert set(pruned(rows, None, None)) == set(range(8, STORED_VERSIONS + 8))
    few = {v: rows[v] for v in (3, 5)}
    assert pruned(few, None, None) == few
