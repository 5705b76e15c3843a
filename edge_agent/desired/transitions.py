"""Every change of the device's durable deployment state, computed (pure) from what is stored.

    commit      a verified document becomes `current` (status activating); versions that were
                activating or on probation are superseded
    after_pass  what the reconciler's PassResult means for the current version: probation,
                good (it becomes last-known-good), failed (no earlier good version: it keeps
                running), rolled_back (`current` goes back to last-known-good)
    recover     at boot: finish or undo what a crash interrupted, so no version is left activating
                or on probation with nothing left to do

Each returns a store.Transition naming the versions it replaces; StateStore.apply() writes it in
one transaction only if they are still there (a rollback is a compare-and-swap on `current`).
A verdict about a version that is no longer current (a newer one was committed while the pass ran)
is dropped: the next pass judges the newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from edge_agent.deployment.pinned import CommittedDeployment
from edge_agent.deployment.reconciler import PassResult
from edge_agent.deployment.rollback import Failed, Good, Probation
from edge_agent.desired.status import VersionStatus, advance
from edge_agent.desired.store import Accepted, Transition
from edge_shared.outcome import State

ACTIVE = frozenset({State.ACTIVATING, State.PROBATION})


def _version(dep: CommittedDeployment | None) -> int | None:
    return None if dep is None else dep.version


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def commit(
    statuses: Mapping[int, VersionStatus],
    current: CommittedDeployment | None,
    last_known_good: CommittedDeployment | None,
    committed: CommittedDeployment,
    accepted: Accepted,
    status: VersionStatus,
) -> Transition:
    """`status`: the committed version's row (verifying)."""
    now = committed.activated_at
    rows = []
    activating = advance(status, State.ACTIVATING, now, description="starting its modules")
    rows.append(activating if activating is not None else status)
    # Every earlier version not yet good (the current one on probation) is replaced by this one.
    for other in statuses.values():
        if other.version != committed.version and other.state in ACTIVE:
            replaced = advance(other, State.SUPERSEDED, now, description=f"replaced by version {committed.version}")
            if replaced is not None:
                rows.append(replaced)
    return Transition(f"commit version {committed.version}", _version(current), _version(last_known_good),
                      current=committed, statuses=tuple(rows), accepted=accepted)


def after_pass(
    statuses: Mapping[int, VersionStatus],
    current: CommittedDeployment | None,
    last_known_good: CommittedDeployment | None,
    result: PassResult,
    now: float,
    window_s: float,
) -> Transition | None:
    if current is None or result.version != current.version or result.verdict is None:
        return None  # nothing committed, podman did not answer, or a newer version came meanwhile
    version = current.version
    expect = (version, _version(last_known_good))
    status = statuses.get(version)
    verdict = result.verdict
    if isinstance(verdict, Good):
        row = advance(status, State.GOOD, now, description=f"every module ran for {window_s:g} s") if status else None
        return Transition(f"version {version} is good", *expect, last_known_good=current,
                          statuses=(row,) if row else ())
    if isinstance(verdict, Failed):
        if last_known_good is not None and last_known_good.version != version:
            back = CommittedDeployment(last_known_good.version, last_known_good.document, last_known_good.images, now)
            row = advance(status, State.ROLLED_BACK, now, code=verdict.code, module=verdict.module,
                          description=f"{verdict.reason}; version {back.version} runs again") if status else None
            return Transition(f"version {version} failed: back to {back.version}", *expect, current=back,
                              statuses=(row,) if row else ())
        row = advance(status, State.FAILED, now, code=verdict.code, module=verdict.module,
                      description=f"{verdict.reason}; no earlier good version to return to, "
                                  "kept running under its restart policies") if status else None
        return Transition(f"version {version} failed", *expect, statuses=(row,)) if row else None
    if isinstance(verdict, Probation) and status is not None:
        if verdict.until is not None:
            row = advance(status, State.PROBATION, now,
                          description=f"every module runs; good at {_iso(verdict.until)} if it stays so")
        else:
            row = advance(status, State.ACTIVATING, now, description=verdict.reason)
        return Transition(f"version {version}: {row.state}", *expect, statuses=(row,)) if row else None
    return None


def recover(
    statuses: Mapping[int, VersionStatus],
    current: CommittedDeployment | None,
    last_known_good: CommittedDeployment | None,
    digest_of_current: str,
    now: float,
) -> Transition | None:
    """At boot. A row activating or on probation that is not `current` has nothing left to do:
    older than current it was replaced; newer, `current` went back to last-known-good (a rollback
    whose status write an older release made separately). The current version, when it is also
    last-known-good, is good. A current version without a row (state from before per-version
    status) gets one, so the replay check knows it."""
    rows: list[VersionStatus] = []
    cur, lkg = _version(current), _version(last_known_good)
    if current is not None and cur not in statuses:
        state = State.GOOD if cur == lkg else State.ACTIVATING
        rows.append(VersionStatus(current.version, digest_of_current, state, current.activated_at))
    for s in statuses.values():
        if s.state not in ACTIVE:
            continue
        if s.version == cur:
            if cur == lkg:
                good = advance(s, State.GOOD, now, description="last-known-good (recorded at restart)")
                if good is not None:
                    rows.append(good)
            continue
        if cur is not None and s.version > cur and cur == lkg:
            moved = advance(s, State.ROLLED_BACK, now, code="rollback_interrupted",
                            description=f"version {cur} runs again; a restart interrupted recording why")
        else:
            moved = advance(s, State.SUPERSEDED, now,
                            description=f"not current after a restart (current: {cur if cur is not None else 'none'})")
        if moved is not None:
            rows.append(moved)
    if not rows:
        return None
    return Transition("recovery at boot", cur, lkg, statuses=tuple(rows))
