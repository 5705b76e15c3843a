"""One status per desired version: the state machine, the reported `deployment` section, and what
`edgectl deploy --wait` concludes from it. Pure: no I/O, no clock.

A document that passes the document gate (admission.py) gets a version row and moves through:

    verifying ──► rejected(code, module)            an image was refused; nothing changed
        │    └──► superseded                        a newer version arrived first
        ▼
    activating ─► probation ─► good                 committed; its containers start; stable
        │            │
        └────────────┴──► failed(module)            failed, no earlier good version to return to
                     └──► rolled_back(module)       failed; the last-known-good version runs again
    (activating and probation can also become superseded when a newer version is committed)

A document refused by the gate never gets a row: it changes no version, key or counter, and is
reported only as `lastRefused` (by the sha256 of its bytes, so the fleet can recognise its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal, Protocol


class State(StrEnum):
    VERIFYING = "verifying"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    ACTIVATING = "activating"
    PROBATION = "probation"
    GOOD = "good"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


NEXT_STATES: Mapping[State, frozenset[State]] = {
    State.VERIFYING: frozenset({State.REJECTED, State.SUPERSEDED, State.ACTIVATING}),
    State.ACTIVATING: frozenset({State.PROBATION, State.GOOD, State.FAILED, State.ROLLED_BACK, State.SUPERSEDED}),
    State.PROBATION: frozenset({State.GOOD, State.FAILED, State.ROLLED_BACK, State.SUPERSEDED}),
    State.GOOD: frozenset(),
    State.REJECTED: frozenset(),
    State.SUPERSEDED: frozenset(),
    State.FAILED: frozenset(),
    State.ROLLED_BACK: frozenset(),
}
FAILURE_STATES = frozenset({State.REJECTED, State.SUPERSEDED, State.FAILED, State.ROLLED_BACK})
# How many version rows are kept and reported (the current and last-known-good ones always are).
KEEP_VERSIONS = 10


@dataclass(frozen=True)
class VersionStatus:
    version: int
    digest: str  # sha256 of the exact bytes received (the signed envelope)
    state: State
    at: float  # when it entered this state (unix time)
    code: str | None = None  # machine-readable reason of a failure state
    module: str | None = None  # the module at fault
    description: str = ""


def advance(
    status: VersionStatus, state: State, at: float, *, code: str | None = None, module: str | None = None,
    description: str = "",
) -> VersionStatus | None:
    """The status after a transition, or None when the transition is not allowed (a terminal state
    is final; a version never goes back). The same state with a new description is an update."""
    if state == status.state:
        if (code, module, description) == (status.code, status.module, status.description):
            return None
        return replace(status, code=code, module=module, description=description)
    if state not in NEXT_STATES[status.state]:
        return None
    return VersionStatus(status.version, status.digest, state, at, code, module, description)


@dataclass(frozen=True)
class Refusal:
    """The last document the gate refused. `version` only when its signature verified."""

    digest: str
    code: str
    description: str
    at: float
    version: int | None = None


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def status_to_dict(status: VersionStatus) -> dict[str, Any]:
    entry: dict[str, Any] = {"state": str(status.state), "digest": status.digest, "since": _iso(status.at)}
    if status.code:
        entry["code"] = status.code
    if status.module:
        entry["module"] = status.module
    if status.description:
        entry["description"] = status.description
    return entry


def deployment_section(
    *,
    current: int | None,
    last_known_good: int | None,
    versions: Iterable[VersionStatus],
    last_refused: Refusal | None,
    max_document_bytes: int,
    document_mode: str = "enforce",
    error: str | None = None,
) -> dict[str, Any]:
    """The reported `deployment` section: the one place the device says what it runs and what
    became of each version (docs/protocol.md, "Reported state")."""
    ordered = sorted(versions, key=lambda s: s.version, reverse=True)
    keep = {s.version for s in ordered[:KEEP_VERSIONS]} | {v for v in (current, last_known_good) if v is not None}
    section: dict[str, Any] = {
        "current": current,
        "lastKnownGood": last_known_good,
        "highestVersion": ordered[0].version if ordered else current,
        "versions": {str(s.version): status_to_dict(s) for s in ordered if s.version in keep},
        "lastRefused": None,
        "maxDocumentBytes": max_document_bytes,
        "documentMode": document_mode,
    }
    if last_refused is not None:
        refused: dict[str, Any] = {
            "digest": last_refused.digest,
            "code": last_refused.code,
            "description": last_refused.description,
            "at": _iso(last_refused.at),
        }
        if last_refused.version is not None:
            refused["version"] = last_refused.version
        section["lastRefused"] = refused
    if error:
        section["error"] = error
    return section


# --------------------------------------------------------------------------- the fleet's reading

WaitTarget = Literal["admitted", "accepted", "running", "good"]
WAIT_TARGETS: Mapping[str, frozenset[State]] = {
    # passed the document gate (signature, replay, expiry, validation); images may still be verifying
    "admitted": frozenset({State.VERIFYING, State.ACTIVATING, State.PROBATION, State.GOOD}),
    # images verified and pinned, the document committed: the device is switching to it
    "accepted": frozenset({State.ACTIVATING, State.PROBATION, State.GOOD}),
    # every module of it runs (stabilisation window, or already good)
    "running": frozenset({State.PROBATION, State.GOOD}),
    # it ran through the stabilisation window: now the last-known-good deployment
    "good": frozenset({State.GOOD}),
}
Outcome = Literal["reached", "failed", "pending"]


def wait_outcome(
    section: Mapping[str, Any] | None, version: int, digest: str, target: str, *,
    agent: str | None = None, agent_update: Mapping[str, Any] | None = None,
) -> tuple[Outcome, str]:
    """What the device's reported `deployment` section says about the document the fleet published
    (its version and the sha256 of its bytes): reached the target state, failed (with the device's
    reason), or not there yet. When the document names an agent release (`agent`), "good" also
    needs the device to run it (its `agentUpdate` section), and a roll-back of it is a failure."""
    outcome, words = _deployment_outcome(section, version, digest, target)
    if outcome != "reached" or agent is None or target != "good":
        return outcome, words
    return _agent_outcome(agent_update or {}, agent, words)


def _agent_outcome(update: Mapping[str, Any], agent: str, words: str) -> tuple[Outcome, str]:
    last = update.get("last")
    trial = update.get("trial")
    on_trial = isinstance(trial, Mapping) and trial.get("version") == agent
    if update.get("running") == agent and not on_trial:  # on trial it may still hang and go back
        return "reached", f"{words}; agent {agent} runs"
    if isinstance(last, Mapping) and last.get("version") == agent and last.get("result") in ("rolled_back", "refused"):
        return "failed", f"agent {agent} {last.get('result')}: {last.get('reason')}"
    if update.get("wanted") == agent and update.get("state") == "refused":
        return "failed", f"agent update refused: {update.get('detail')}"
    state = update.get("state") or "not reported"
    detail = f" ({update['detail']})" if update.get("detail") else ""
    return "pending", f"{words}; agent update to {agent}: {state}{detail}"


def _deployment_outcome(
    section: Mapping[str, Any] | None, version: int, digest: str, target: str
) -> tuple[Outcome, str]:
    section = section or {}
    refused = section.get("lastRefused") or {}
    if isinstance(refused, Mapping) and refused.get("digest") == digest:
        return "failed", f"refused: {refused.get('code')}: {refused.get('description')}"
    versions = section.get("versions") or {}
    entry = versions.get(str(version)) if isinstance(versions, Mapping) else None
    if not isinstance(entry, Mapping):
        return "pending", "not reported yet"
    if entry.get("digest") != digest:
        # Another document holds this version (ours may be refused as a replay any moment).
        return "pending", f"the device's version {version} is another document"
    try:
        state = State(str(entry.get("state")))
    except ValueError:
        return "pending", f"unknown state {entry.get('state')!r}"
    if state in FAILURE_STATES:
        parts = [str(state)]
        if entry.get("code"):
            parts.append(str(entry["code"]))
        if entry.get("module"):
            parts.append(f"module {entry['module']}")
        return "failed", ": ".join(parts) + (f": {entry['description']}" if entry.get("description") else "")
    if state in WAIT_TARGETS[target]:
        return "reached", str(state)
    return "pending", str(state) + (f" ({entry['description']})" if entry.get("description") else "")


class StatusSink(Protocol):
    """What the reconciler (deployment/component.py) tells the desired-state room: which version it
    runs, what became of a version, and whether the container runtime answers."""

    def running(self, current: int | None, last_known_good: int | None) -> None: ...

    def outcome(
        self, version: int, state: State, *, code: str | None = None, module: str | None = None,
        description: str = "",
    ) -> None: ...

    def runtime_error(self, error: str | None) -> None: ...

