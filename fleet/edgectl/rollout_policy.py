"""Staged rollouts (`edgectl rollout`): every decision, as pure functions of the rollout's state.
No I/O, no clock (callers pass `now`), no asyncio; fleet/edgectl/rollout.py is the shell that
publishes, reads reports and stores the state (fleet/edgectl/rollout_store.py).

A rollout publishes one signed deployment to the devices a selector picked, batch by batch. Each
device moves through:

    waiting ─► publishing ─► updating ─► reached           (the device reports the target state)
       │                         ├────► failed(reason)     (rolled back, failed, ... or silent past
       │                         │                          the timeout)
       │                         └────► refused(reason)    (the device refused or rejected the
       │                                                    document: it never left what it ran)
       ├─► skipped  (its batch failed before it was published)
       └─► offline  (offline when its turn came, under --offline skip: not published)

and, when its batch failed and the rollout returns it to the previous deployment:

    revert_publishing ─► reverting ─► reverted | revert_failed(reason)
                                  └─► revert_queued   (the device is offline: the return is retained
                                                       on the broker and applies when it reconnects)
    no_previous                       (the previous deployment's document is unknown: left as is)

A refused, offline or skipped device never left the deployment it ran: it is not returned.

The rollout itself:

    running ─► completed                      every batch passed its gate
       └─► (a batch's gate failed) ─► reverting (--on-failure rollback) ─► halted
                                    └─► halting   (--on-failure halt)    ─► halted

A batch's gate passes when every device in it has settled (reached, failed, refused or offline)
and at least the success threshold of them reached the target state; it fails as soon as more
devices did not reach it than the threshold allows. Within a batch at most `max_parallel` devices are updating at once.
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
    REVERT_QUEUED = "revert_queued"
    NO_PREVIOUS = "no_previous"
    REFUSED = "refused"
    OFFLINE = "offline"


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
# Settled without reaching the target: what the gate counts against the threshold.
NOT_REACHED = frozenset({Phase.FAILED, Phase.REFUSED, Phase.OFFLINE})
OnFailure = Literal["rollback", "halt"]
OfflinePolicy = Literal["skip", "wait"]
Outcome = Literal["reached", "failed", "pending"]


@dataclass(frozen=True)
class Policy:
    target: str = "good"  # a state of edge_agent.desired.status.WAIT_TARGETS
    timeout_s: float = 300.0  # per device, from its publish to the target state
    threshold: float = 100.0  # percent of a batch that must reach the target
    max_parallel: int = 10  # devices updating at once
    on_failure: OnFailure = "rollback"
    # A device offline when its turn comes: "skip" does not publish to it (counted as offline,
    # against the threshold); "wait" publishes (retained) and waits for it up to the timeout.
    offline: OfflinePolicy = "skip"
    forced: bool = False  # the documents take devices from another rollout's lease (--force)


def lease_s(policy: Policy, batch_size: int) -> float:
    """How long a device published to stays held by the rollout (the `until` of its claim): its
    batch's publishing rounds, each up to the timeout, and one more timeout for the return of a
    failed batch. Past it the claim lapses, so a rollout whose edgectl died holds nothing."""
    rounds = max(1, math.ceil(batch_size / policy.max_parallel))
    return (rounds + 1) * policy.timeout_s + 60.0


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
RETURNED = frozenset({Phase.REVERT_PUBLISHING, Phase.REVERTING, Phase.REVERTED, Phase.REVERT_FAILED,
                      Phase.REVERT_QUEUED, Phase.NO_PREVIOUS})


def mark_offline(record: DeviceRecord, last_seen: str, now: float) -> DeviceRecord:
    """Offline when its turn came, under --offline skip: not published, settled as not reached."""
    reason = f"offline (last seen {last_seen}): not published (--offline skip)"
    return replace(record, phase=Phase.OFFLINE, since=now, reason=reason, failed_reason=reason)


def refused_outcome(detail: str) -> bool:
    """Whether a failed verdict means the device never took the document (refused at its gate,
    or its images rejected before the commit): it still runs what it ran before."""
    return detail.startswith(("refused:", "rejected"))


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
            phase = Phase.REFUSED if refused_outcome(detail) else Phase.FAILED
            return replace(record, phase=phase, since=now, reason=reason, failed_reason=reason)
        if now - record.since > policy.timeout_s:
            reason = _timeout_reason(record.version, policy, detail, online)
            return replace(record, phase=Phase.FAILED, since=now, reason=reason, failed_reason=reason)
        if not detail.startswith(NOT_HEARD):
            # The device reports the version (verifying, activating, probation): it passed its gate.
            reason = f"version {record.version} {detail}"
            return record if reason == record.reason else replace(record, reason=reason)
        return record
    if record.phase == Phase.REVERTING:
        if outcome == "reached":
            return replace(record, phase=Phase.REVERTED, since=now,
                           reason=f"version {record.revert_version} ({previous_name(record)}) {detail}")
        if outcome == "failed":
            return replace(record, phase=Phase.REVERT_FAILED, since=now,
                           reason=f"version {record.revert_version} {detail}")
        if online is False:
            # Waiting for an offline device again would only repeat its timeout: the return is
            # retained on the broker and is what it gets when it reconnects.
            return replace(record, phase=Phase.REVERT_QUEUED, since=now,
                           reason=f"version {record.revert_version} ({previous_name(record)}) published; the "
                           "device is offline and gets it when it reconnects")
        if now - record.since > policy.timeout_s:
            return replace(record, phase=Phase.REVERT_FAILED, since=now,
                           reason=_timeout_reason(record.revert_version, policy, detail, online))
        return record
    return record


# What wait_outcome says while the device has not reported the version at all.
NOT_HEARD = ("not received yet", "not reported yet", "the device's version")


def unheard(record: DeviceRecord) -> bool:
    """Published, and the device has said nothing of it yet: it may still refuse it at its gate
    (a document it refuses changes nothing, so there is nothing to return)."""
    return record.phase == Phase.UPDATING and record.reason == f"version {record.version} published"


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
    refused: int = 0  # of `failed`: refused the document (never left what it ran)
    offline: int = 0  # of `failed`: offline when their turn came (not published)

    def describe(self, policy: Policy) -> str:
        allowed = self.size - self.needed
        text = f"{self.reached}/{self.size} {policy.target}"
        for count, word in ((self.failed - self.refused - self.offline, "failed"), (self.refused, "refused"),
                            (self.offline, "offline")):
            if count:
                text += f", {count} {word}"
        if self.pending:
            text += f", {self.pending} pending"
        if self.verdict == "failed":
            text += (f": more than {allowed} of {self.size} failed "
                     f"(success threshold {policy.threshold:g}%)")
        return text


def gate(records: Sequence[DeviceRecord], policy: Policy) -> Gate:
    size = len(records)
    reached = sum(r.phase == Phase.REACHED for r in records)
    failed = sum(r.phase in NOT_REACHED for r in records)
    pending = size - reached - failed
    need = needed(size, policy.threshold)
    if failed > size - need:
        verdict: Literal["open", "passed", "failed"] = "failed"
    elif pending == 0:
        verdict = "passed"
    else:
        verdict = "open"
    return Gate(verdict, size, reached, failed, pending, need, sum(r.phase == Phase.REFUSED for r in records),
                sum(r.phase == Phase.OFFLINE for r in records))


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
    # reverting: every device of the failed batch that may have the rollout's document goes back;
    # one that has not answered yet is asked first (it answers at once, or times out): a device
    # that refuses the document never left what it ran, and a return would only be refused too
    todo = [r.device for r in batch if r.phase == Phase.REVERT_PUBLISHING
            or (r.phase in PUBLISHED and r.version is not None and not unheard(r))]
    if todo:
        return Revert(tuple(todo))
    if any(r.phase in REVERT_IN_FLIGHT or unheard(r) for r in batch):
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
        queued = sum(r.phase == Phase.REVERT_QUEUED for r in batch)
        tried = sum(r.phase in (Phase.REVERTED, Phase.REVERT_FAILED, Phase.REVERT_QUEUED, Phase.NO_PREVIOUS)
                    for r in batch)
        if tried:
            suffix = f"; {back} of {tried} devices of batch {rollout.batch + 1} returned to their previous deployment"
            if queued:
                suffix += f" ({queued} offline: the return waits for them on the broker)"
        else:
            suffix = "; no device of it left its deployment: nothing to return"
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


def outcome_counts(rollout: Rollout) -> dict[str, int]:
    """What happened to each device, in the words of the final line: good (the target state;
    `reached`), failed, refused, offline, skipped (never published), returned, not returned,
    untouched (a batch never started)."""
    out = {"good": 0, "failed": 0, "refused": 0, "offline": 0, "skipped": 0, "returned": 0,
           "return queued": 0, "not returned": 0, "untouched": 0, "in progress": 0}
    for r in rollout.devices:
        key = {
            Phase.REACHED: "good", Phase.FAILED: "failed", Phase.REFUSED: "refused", Phase.OFFLINE: "offline",
            Phase.SKIPPED: "skipped", Phase.REVERTED: "returned", Phase.REVERT_QUEUED: "return queued",
            Phase.REVERT_FAILED: "not returned", Phase.NO_PREVIOUS: "not returned", Phase.WAITING: "untouched",
        }.get(r.phase, "in progress")
        out[key] += 1
    return out


def final_line(rollout: Rollout) -> str:
    """The last progress line: the rollout's end and how many devices ended how (good is the
    --until state; a count that is 0 is left out)."""
    counts = outcome_counts(rollout)
    words = [f"{n} {rollout.policy.target if k == 'good' else k}" for k, n in counts.items() if n]
    return f"rollout {rollout.id} {str(rollout.status).upper()}: {', '.join(words)}"


def phase_counts(records: Iterable[DeviceRecord]) -> Mapping[Phase, int]:
    out: dict[Phase, int] = {}
    for r in records:
        out[r.phase] = out.get(r.phase, 0) + 1
    return out
