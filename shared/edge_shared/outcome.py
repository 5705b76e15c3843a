"""The states a desired version goes through on the device, as reported in its `deployment`
section, and what the fleet concludes from them (`edgectl deploy --wait`, rollouts). Pure.
The device's state machine over these states is edge_agent/desired/status.py."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal


class State(StrEnum):
    VERIFYING = "verifying"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    ACTIVATING = "activating"
    PROBATION = "probation"
    GOOD = "good"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


FAILURE_STATES = frozenset({State.REJECTED, State.SUPERSEDED, State.FAILED, State.ROLLED_BACK})


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
        return "pending", _not_received(section)
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


def _not_received(section: Mapping[str, Any]) -> str:
    """The device has not reported this version: say what it did report, when it reported at all
    (an offline device's last report is still the truth about what it ran)."""
    if not section:
        return "not reported yet"
    current = section.get("current")
    if current is None:
        return "not received yet (its last report: no deployment)"
    versions = section.get("versions")
    entry = versions.get(str(current)) if isinstance(versions, Mapping) else None
    state = entry.get("state") if isinstance(entry, Mapping) else None
    return f"not received yet (its last report: version {current}{f' {state}' if state else ''})"
