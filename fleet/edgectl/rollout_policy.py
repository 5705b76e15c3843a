"""Staged rollouts (`edgectl rollout`): every decision, as pure functions of the rollout's state.
No I/O, no clock (callers pass `now`), no asyncio; fleet/edgectl/rollout.py is the shell that
publishes, reads reports and stores the state (fleet/edgectl/rollout_store.py).

A rollout publishes one signed deployment to the devices a selector picked, batch by batch. Each
device moves through:

    waiting ─► publishing ─► updating ─► reached           (the device reports the target state)
       │                         └────► failed(reason)     (refused, rejected, rolled back, ... or
       └─► skipped                                           silent past the timeout)
    (its batch failed before it was published)

and, when its batch failed and the rollout returns it to the previous deployment:

    revert_publishing ─► reverting ─► reverted | revert_failed(reason)
    no_previous                       (the previous deployment's document is unknown: left as is)

The rollout itself:

    running ─► completed                      every batch passed its gate
       └─► (a batch's gate failed) ─► reverting (--on-failure rollback) ─► halted
                                    └─► halting   (--on-failure halt)    ─► halted

A batch's gate passes when every device in it has settled (reached or failed) and at least the
success threshold of them reached the target state; it fails as soon as more devices failed than
the threshold allows. Within a batch at most `max_parallel` devices are updating at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

MAX_BATCHES = 100


class SpecError(ValueError):
    """A malformed --batches, --success-threshold or --max-parallel; the message says why."""


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Step:
    """One entry of --batches: the devices updated once this batch is done, cumulative: a count
    ("1", "10") or a percentage of the selected devices ("10%", rounded up)."""

    amount: int
    percent: bool

    def target(self, total: int) -> int:
        if self.percent:
            return min(total, math.ceil(self.amount * total / 100))
        return min(total, self.amount)

    def __str__(self) -> str:
        return f"{self.amount}%" if self.percent else str(self.amount)


def parse_batches(text: str) -> tuple[Step, ...]:
    """`1,10%,50%,100%`: cumulative stages. Counts are ≥ 1, percentages 1-100; each stage must
    reach at least as far as the one before (a count and a percentage cannot be compared before
    the fleet is known; plan_batches drops a stage that adds nobody)."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise SpecError(f"--batches {text!r}: expected a comma-separated list such as 1,10%,50%,100%")
    if len(parts) > MAX_BATCHES:
        raise SpecError(f"--batches: {len(parts)} stages; at most {MAX_BATCHES}")
    steps: list[Step] = []
    for part in parts:
        percent = part.endswith("%")
        number = part[:-1].strip() if percent else part
        if not number.isdigit():
            raise SpecError(f"--batches: {part!r} is not a device count (1, 2, ...) or a percentage (1%-100%)")
        amount = int(number)
        if amount < 1:
            raise SpecError(f"--batches: {part!r}: a stage must add at least one device (1 or more, or 1%-100%)")
        if percent and amount > 100:
            raise SpecError(f"--batches: {part!r}: a percentage is at most 100%")
        step = Step(amount, percent)
        prev = steps[-1] if steps else None
        if prev is not None and prev.percent == step.percent and step.amount < prev.amount:
            raise SpecError(f"--batches: {part!r} comes after {prev}: stages are cumulative and cannot shrink")
        steps.append(step)
    return tuple(steps)


def plan_batches(devices: Sequence[str], steps: Sequence[Step]) -> list[list[str]]:
    """Split `devices` (in the given order) into batches: batch i holds the devices between stage
    i-1's target and stage i's. A stage that adds nobody is dropped; devices beyond the last
    stage form one more, final batch (so a rollout always ends with every selected device)."""
    batches: list[list[str]] = []
    done = 0
    for step in steps:
        target = max(done, step.target(len(devices)))
        if target > done:
            batches.append(list(devices[done:target]))
            done = target
    if done < len(devices):
        batches.append(list(devices[done:]))
    return batches


def parse_percent(text: str, what: str) -> float:
    """`90%` or `90` -> 90.0; between 0 (exclusive) and 100."""
    number = text.strip().removesuffix("%").strip()
    try:
        value = float(number)
    except ValueError:
        raise SpecError(f"{what} {text!r}: expected a percentage such as 90% or 100%") from None
    if not 0 < value <= 100 or math.isnan(value):
        raise SpecError(f"{what} {text!r}: expected more than 0% and at most 100%")
    return value


def needed(size: int, threshold: float) -> int:
    """Devices of a batch of `size` that must reach the target state (at least one)."""
    return max(1, math.ceil(size * threshold / 100 - 1e-9)) if size else 0


# --------------------------------------------------------------------------- state


class Phase(StrEnum):
    WAITING = "waiting"
    PUBLISHING = "publishing"
    UPDATING = "updating"
    REACHED = "reached"
    FAILED = "failed"
    SKIPPED = "skipped"
    REVERT_PUBLISHING = "revert_publishing"
    REVERTING = "reverting"
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"
    NO_PREVIOUS = "no_previous"


class Status(StrEnum):
    RUNNING = "running"
    REVERTING = "reverting"
    HALTING = "halting"
    HALTED = "halted"
    COMPLETED = "completed"


IN_FLIGHT = frozenset({Phase.PUBLISHING, Phase.UPDATING})
PUBLISHED = frozenset({Phase.PUBLISHING, Phase.UPDATING, Phase.REACHED, Phase.FAILED})
REVERT_IN_FLIGHT = frozenset({Phase.REVERT_PUBLISHING, Phase.REVERTING})
FINISHED = frozenset({Status.HALTED, Status.COMPLETED})
OnFailure = Literal["rollback", "halt"]
Outcome = Literal["reached", "failed", "pending"]


@dataclass(frozen=True)
class Policy:
    target: str = "good"  # a state of edge_agent.desired.status.WAIT_TARGETS
    timeout_s: float = 300.0  # per device, from its publish to the target state
    threshold: float = 100.0  # percent of a batch that must reach the target
    max_parallel: int = 10  # devices updating at once
    on_failure: OnFailure = "rollback"


@dataclass(frozen=True)
class DeviceRecord:
    device: str
    batch: int  # 0-based
    phase: Phase = Phase.WAITING
    since: float = 0.0  # when it entered this phase (unix time)
    reason: str = ""  # the device's own words for a failure; what is known for other phases
    version: int | None = None  # the rollout's document for this device
    digest: str | None = None
    previous: int | None = None  # the version it ran before (its deployment is what a revert restores)
    revert_version: int | None = None
    revert_digest: str | None = None
    failed_reason: str = ""  # why it failed in the rollout (kept through the revert)


@dataclass(frozen=True)
class Rollout:
    id: str
    status: Status
    batch: int  # the batch in progress (0-based), or the one that failed
    batches: int
    policy: Policy
    devices: tuple[DeviceRecord, ...]
    reason: str = ""  # why it halted

    def in_batch(self, batch: int) -> list[DeviceRecord]:
        return [r for r in self.devices if r.batch == batch]

    def record(self, device: str) -> DeviceRecord:
        for r in self.devices:
            if r.device == device:
                return r
        raise KeyError(device)


def new_rollout(rollout_id: str, batches: Sequence[Sequence[str]], policy: Policy) -> Rollout:
    records = tuple(DeviceRecord(d, i) for i, batch in enumerate(batches) for d in batch)
    if len({r.device for r in records}) != len(records):
        raise SpecError("a device appears in two batches")
    return Rollout(rollout_id, Status.RUNNING, 0, len(batches), policy, records)


def with_records(rollout: Rollout, changed: Iterable[DeviceRecord]) -> Rollout:
    by_device = {r.device: r for r in changed}
    if not by_device:
        return rollout
    return replace(rollout, devices=tuple(by_device.get(r.device, r) for r in rollout.devices))


# --------------------------------------------------------------------------- device transitions


def mark_publishing(record: DeviceRecord, version: int, digest: str, previous: int | None, now: float) -> DeviceRecord:
    """The document for this device is made (and stored, so a resume publishes the same bytes)."""
    return replace(record, phase=Phase.PUBLISHING, since=now, version=version, digest=digest, previous=previous,
                   reason=f"publishing version {version}")


def mark_published(record: DeviceRecord, now: float) -> DeviceRecord:
    if record.phase == Phase.PUBLISHING:
        return replace(record, phase=Phase.UPDATING, since=now, reason=f"version {record.version} published")
    if record.phase == Phase.REVERT_PUBLISHING:
        return replace(record, phase=Phase.REVERTING, since=now,
                       reason=f"version {record.revert_version} published ({previous_name(record)})")
    return record


def mark_publish_failed(record: DeviceRecord, error: str, now: float) -> DeviceRecord:
    """The broker refused the publish, or the document could not be made (too large, ...)."""
    if record.phase in (Phase.WAITING, Phase.PUBLISHING):
        return replace(record, phase=Phase.FAILED, since=now, reason=error, failed_reason=error)
    if record.phase in REVERT_IN_FLIGHT:
        return replace(record, phase=Phase.REVERT_FAILED, since=now, reason=error)
    return record


def previous_name(record: DeviceRecord) -> str:
    """What returning the device restores, in words."""
    if record.previous is None:
        return "the empty deployment (it ran none before)"
    return f"the deployment of version {record.previous}"


def mark_reverting(record: DeviceRecord, version: int, digest: str, now: float) -> DeviceRecord:
    return replace(record, phase=Phase.REVERT_PUBLISHING, since=now, revert_version=version, revert_digest=digest,
                   failed_reason=record.failed_reason or _reason_before_revert(record),
                   reason=f"returning to {previous_name(record)} as version {version}")


def mark_no_previous(record: DeviceRecord, why: str, now: float) -> DeviceRecord:
    return replace(record, phase=Phase.NO_PREVIOUS, since=now, reason=why,
                   failed_reason=record.failed_reason or _reason_before_revert(record))


NOT_SETTLED = "had not settled when its batch failed"
RETURNED = frozenset({Phase.REVERT_PUBLISHING, Phase.REVERTING, Phase.REVERTED, Phase.REVERT_FAILED, Phase.NO_PREVIOUS})


def _reason_before_revert(record: DeviceRecord) -> str:
    if record.phase == Phase.REACHED:
        return f"version {record.version} reached the target, returned with its batch"
    if record.phase in IN_FLIGHT:
        return f"version {record.version} {NOT_SETTLED}"
    return record.reason


def late_verdict(record: DeviceRecord, outcome: Outcome, detail: str) -> DeviceRecord:
    """A device whose batch failed while it was still updating may still say what became of the
    rollout's version before the return reaches it: keep its own words. (Superseded is what the
    return itself does to it: that says nothing new.)"""
    if record.phase not in RETURNED or not record.failed_reason.endswith(NOT_SETTLED):
        return record
    if outcome == "reached":
        reason = f"version {record.version} {detail} (after its batch failed), returned with its batch"
    elif outcome == "failed" and not detail.startswith("superseded"):
        reason = f"version {record.version} {detail}"
    else:
        return record
    return replace(record, failed_reason=reason)


def late_watched(record: DeviceRecord) -> tuple[int, str] | None:
    """(version, digest) of the rollout's document when `late_verdict` may still learn about it."""
    if record.phase in RETURNED and record.failed_reason.endswith(NOT_SETTLED) and record.version and record.digest:
        return record.version, record.digest
    return None


def observe(
    record: DeviceRecord, outcome: Outcome, detail: str, now: float, policy: Policy, online: bool | None = None,
) -> DeviceRecord:
    """What the device's report (edge_agent.desired.status.wait_outcome of the document the
    rollout published to it: `outcome`, `detail`) means for its record. Only a device that waits
    for a verdict (updating, reverting) changes; a silent one fails once `policy.timeout_s` passed
    since its publish."""
    if record.phase == Phase.UPDATING:
        if outcome == "reached":
            return replace(record, phase=Phase.REACHED, since=now, reason=f"version {record.version} {detail}")
        if outcome == "failed":
            reason = f"version {record.version} {detail}"
            return replace(record, phase=Phase.FAILED, since=now, reason=reason, failed_reason=reason)
        if now - record.since > policy.timeout_s:
            reason = _timeout_reason(record.version, policy, detail, online)
            return replace(record, phase=Phase.FAILED, since=now, reason=reason, failed_reason=reason)
        return record
    if record.phase == Phase.REVERTING:
        if outcome == "reached":
            return replace(record, phase=Phase.REVERTED, since=now,
                           reason=f"version {record.revert_version} ({previous_name(record)}) {detail}")
        if outcome == "failed":
            return replace(record, phase=Phase.REVERT_FAILED, since=now,
                           reason=f"version {record.revert_version} {detail}")
        if now - record.since > policy.timeout_s:
            return replace(record, phase=Phase.REVERT_FAILED, since=now,
                           reason=_timeout_reason(record.revert_version, policy, detail, online))
        return record
    return record


def _timeout_reason(version: int | None, policy: Policy, detail: str, online: bool | None) -> str:
    text = f"version {version} not {policy.target} within {policy.timeout_s:g} s (last reported: {detail})"
    return text + ("; the device is offline" if online is False else "")


def watched(record: DeviceRecord) -> tuple[int, str] | None:
    """(version, digest) of the document whose outcome matters for this record now, if any."""
    if record.phase == Phase.UPDATING and record.version is not None and record.digest:
        return record.version, record.digest
    if record.phase == Phase.REVERTING and record.revert_version is not None and record.revert_digest:
        return record.revert_version, record.revert_digest
    return None


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Gate:
    verdict: Literal["open", "passed", "failed"]
    size: int
    reached: int
    failed: int
    pending: int
    needed: int

    def describe(self, policy: Policy) -> str:
        allowed = self.size - self.needed
        text = f"{self.reached}/{self.size} {policy.target}"
        if self.failed:
            text += f", {self.failed} failed"
        if self.pending:
            text += f", {self.pending} pending"
        if self.verdict == "failed":
            text += (f": more than {allowed} of {self.size} failed "
                     f"(success threshold {policy.threshold:g}%)")
        return text


def gate(records: Sequence[DeviceRecord], policy: Policy) -> Gate:
    size = len(records)
    reached = sum(r.phase == Phase.REACHED for r in records)
    failed = sum(r.phase == Phase.FAILED for r in records)
    pending = size - reached - failed
    need = needed(size, policy.threshold)
    if failed > size - need:
        verdict: Literal["open", "passed", "failed"] = "failed"
    elif pending == 0:
        verdict = "passed"
    else:
        verdict = "open"
    return Gate(verdict, size, reached, failed, pending, need)


# --------------------------------------------------------------------------- what next


@dataclass(frozen=True)
class Publish:
    """Publish the rollout's document to these devices (a device in `publishing` gets the bytes
    stored for it again: its publish may not have reached the broker)."""

    devices: tuple[str, ...]


@dataclass(frozen=True)
class Revert:
    """Return these devices to their previous deployment (a new version; a device in
    `revert_publishing` gets its stored revert document again)."""

    devices: tuple[str, ...]


@dataclass(frozen=True)
class PassBatch:
    batch: int
    gate: Gate


@dataclass(frozen=True)
class FailBatch:
    batch: int
    gate: Gate


@dataclass(frozen=True)
class Halt:
    """Every device of the failed batch has settled (returned, or not): the rollout is halted."""


@dataclass(frozen=True)
class Wait:
    """Nothing to do until a device reports (or times out)."""


@dataclass(frozen=True)
class Done:
    status: Status


Decision = Publish | Revert | PassBatch | FailBatch | Halt | Wait | Done


def decide(rollout: Rollout) -> Decision:
    """The next thing to do. Apply the device reports (`observe`) first, then ask again after
    carrying out the decision, until it is Wait or Done."""
    if rollout.status in FINISHED:
        return Done(rollout.status)
    batch = rollout.in_batch(rollout.batch)
    if rollout.status == Status.RUNNING:
        verdict = gate(batch, rollout.policy)
        if verdict.verdict == "failed":
            return FailBatch(rollout.batch, verdict)
        if verdict.verdict == "passed":
            return PassBatch(rollout.batch, verdict)
        again = [r.device for r in batch if r.phase == Phase.PUBLISHING]
        slots = rollout.policy.max_parallel - sum(r.phase in IN_FLIGHT for r in batch)
        fresh = [r.device for r in batch if r.phase == Phase.WAITING][: max(0, slots)]
        if again or fresh:
            return Publish(tuple(again + fresh))
        return Wait()
    if rollout.status == Status.HALTING:
        again = [r.device for r in batch if r.phase == Phase.PUBLISHING]
        if again:
            return Publish(tuple(again))
        return Wait() if any(r.phase in IN_FLIGHT for r in batch) else Halt()
    # reverting: every device of the failed batch that may have the rollout's document goes back
    todo = [r.device for r in batch
            if (r.phase in PUBLISHED and r.version is not None) or r.phase == Phase.REVERT_PUBLISHING]
    if todo:
        return Revert(tuple(todo))
    if any(r.phase in REVERT_IN_FLIGHT for r in batch):
        return Wait()
    return Halt()


def pass_batch(rollout: Rollout) -> Rollout:
    if rollout.batch + 1 >= rollout.batches:
        return replace(rollout, status=Status.COMPLETED, reason="")
    return replace(rollout, batch=rollout.batch + 1)


def fail_batch(rollout: Rollout, verdict: Gate, now: float) -> Rollout:
    """The gate failed: stop publishing; devices of the batch not yet published are skipped."""
    reason = f"batch {rollout.batch + 1} of {rollout.batches} failed its gate: {verdict.describe(rollout.policy)}"
    status = Status.REVERTING if rollout.policy.on_failure == "rollback" else Status.HALTING
    skipped = [replace(r, phase=Phase.SKIPPED, since=now, reason="not published: its batch failed first")
               for r in rollout.in_batch(rollout.batch) if r.phase == Phase.WAITING]
    return replace(with_records(rollout, skipped), status=status, reason=reason)


def halt(rollout: Rollout) -> Rollout:
    batch = rollout.in_batch(rollout.batch)
    if rollout.status == Status.REVERTING:
        back = sum(r.phase == Phase.REVERTED for r in batch)
        tried = sum(r.phase in (Phase.REVERTED, Phase.REVERT_FAILED, Phase.NO_PREVIOUS) for r in batch)
        suffix = f"; {back} of {tried} devices of batch {rollout.batch + 1} returned to their previous deployment"
    else:
        suffix = "; --on-failure halt: its devices were left as they are"
    return replace(rollout, status=Status.HALTED, reason=rollout.reason + suffix)


# --------------------------------------------------------------------------- reading


def batch_summary(rollout: Rollout, batch: int) -> str:
    """One line per batch for progress and `edgectl rollout status`."""
    records = rollout.in_batch(batch)
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.phase)] = counts.get(str(r.phase), 0) + 1
    if all(r.phase == Phase.WAITING for r in records):
        return "not started: never changed"
    if batch < rollout.batch or (batch == rollout.batch and rollout.status == Status.COMPLETED):
        head = "passed"
    elif batch == rollout.batch and rollout.status in (Status.REVERTING, Status.HALTING, Status.HALTED):
        head = "failed"
    else:
        head = "in progress"
    return head + ": " + ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items()))


def phase_counts(records: Iterable[DeviceRecord]) -> Mapping[Phase, int]:
    out: dict[Phase, int] = {}
    for r in records:
        out[r.phase] = out.get(r.phase, 0) + 1
    return out
