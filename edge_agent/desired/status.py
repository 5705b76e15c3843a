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

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from edge_shared.outcome import State

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
# How many version rows are reported (the current and last-known-good ones always are).
KEEP_VERSIONS = 10
# How many are stored, and held in memory: more than are reported, so the newest version is never
# pruned by an old one (the current and last-known-good ones are always kept).
STORED_VERSIONS = KEEP_VERSIONS * 2


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


def pruned(statuses: Mapping[int, VersionStatus], current: int | None, last_known_good: int | None
           ) -> dict[int, VersionStatus]:
    """The rows that are kept: the STORED_VERSIONS newest, and those of `current` and
    `last_known_good` (the rule the store's prune applies to state.db)."""
    newest = sorted(statuses, reverse=True)[:STORED_VERSIONS]
    keep = set(newest) | {current, last_known_good}
    return {v: s for v, s in statuses.items() if v in keep}


@dataclass(frozen=True)
class Refusal:
    """The last document the gate refused. `version` only when its signature verified."""

    digest: str
    code: str
    description: str
    at: float
    version: int | None = None


@functools.lru_cache(maxsize=256)  # a row's time is formatted again for every report while it is shown
def _iso(ts: float) -> str:
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
    floor: int | None = None,
) -> dict[str, Any]:
    """The reported `deployment` section: the one place the device says what it runs and what
    became of each version (docs/protocol.md, "Reported state"). `floor`: the replay floor kept
    across agent roll-backs (trust_floor.py), which a restored state.db's versions may lie below:
    the newest version reported is never below it, or the fleet would sign its next document with
    a version the device refuses as a replay."""
    ordered = sorted(versions, key=lambda s: s.version, reverse=True)
    highest = max((v for v in (ordered[0].version if ordered else current, floor) if v is not None), default=None)
    keep = {s.version for s in ordered[:KEEP_VERSIONS]} | {v for v in (current, last_known_good) if v is not None}
    section: dict[str, Any] = {
        "current": current,
        "lastKnownGood": last_known_good,
        "highestVersion": highest,
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
