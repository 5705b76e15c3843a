"""The shell of `edgectl rollout`: carries out what fleet/edgectl/rollout_policy.py decides.

It keeps one MQTT connection with every selected device's desired, reported and presence topics
subscribed (the cache FleetClient.watch keeps current), reads each device's verdict on the
document published to it with the same reading `edgectl deploy --wait` uses
(edge_agent.desired.status.wait_outcome), publishes concurrently (QoS 1, bounded in flight), and
stores every step in the rollout's SQLite file (rollout_store.py) before it acts on it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgectl import rollout_policy as rp
from edgectl.client import DeviceView, FleetClient, FleetError, Published, Signer, agent_release, next_version
from edgectl.rollout_store import Previous, RolloutStore, owner_id

if TYPE_CHECKING:
    from edge_shared.trust.keys import TrustedKey

# A device whose report did not change is not re-read more often than this (its timeout is still
# checked on every pass).
HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class Signing:
    sign: Signer
    verify_key: TrustedKey


def previous_of(view: DeviceView) -> tuple[int | None, Previous]:
    """The deployment the device runs now, as the document a return to it would carry: the
    retained desired document, when its bytes are the ones the device reports for its current
    version (the device authenticated and runs exactly them). A device that ran nothing returns to
    the empty deployment."""
    section = (view.reported or {}).get("deployment")
    if not isinstance(section, Mapping):
        return None, Previous(None, "it reports no deployment section (not an agent of this version?)")
    current = section.get("current")
    if current is None:
        return None, Previous({"deployment": {"modules": {}}}, "it ran no deployment before: the empty one")
    entry = (section.get("versions") or {}).get(str(current))
    digest = entry.get("digest") if isinstance(entry, Mapping) else None
    retained = hashlib.sha256(view.desired_raw).hexdigest() if view.desired_raw else None
    if digest and digest == retained and isinstance(view.desired, dict) and isinstance(
        view.desired.get("deployment"), dict
    ):
        document: dict[str, Any] = {"deployment": view.desired["deployment"]}
        if isinstance(view.desired.get("properties"), dict):
            document["properties"] = view.desired["properties"]
        return current, Previous(document, f"version {current}")
    return current, Previous(
        None, f"the document of version {current} (what it ran before) is not the one retained on the broker"
    )


def transition_line(old: rp.DeviceRecord, new: rp.DeviceRecord) -> str | None:
    """The progress line for a device record that changed (None when it is not news)."""
    if old.phase == new.phase:
        return None
    if new.phase == rp.Phase.FAILED:
        return f"{new.device}: FAILED: {new.reason}"
    if new.phase == rp.Phase.REVERT_FAILED:
        return f"{new.device}: NOT RETURNED: {new.reason}"
    if new.phase == rp.Phase.NO_PREVIOUS:
        return f"{new.device}: not returned: {new.reason}"
    if new.phase in (rp.Phase.PUBLISHING, rp.Phase.REVERT_PUBLISHING):
        return None
    return f"{new.device}: {new.reason}"


class RolloutRunner:
    def __init__(
        self,
        fleet: FleetClient,
        store: RolloutStore,
        rollout_id: str,
        signing: Signing,
        out: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.5,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.id = rollout_id
        self.signing = signing
        self.out = out
        self.clock = clock
        self.poll_s = poll_s
        self._read: dict[str, tuple[int, tuple[str, str]]] = {}  # device -> (reports seen, outcome)
        self._heartbeat = 0.0

    async def run(self) -> rp.Rollout:
        rollout, meta = self.store.load(self.id)
        if meta.prefix != self.fleet.prefix:
            raise FleetError(f"rollout {self.id} was started under the prefix {meta.prefix!r}, not "
                             f"{self.fleet.prefix!r}: use --prefix {meta.prefix}")
        self.manifest, self.properties = meta.manifest, meta.properties
        if rollout.status in rp.FINISHED:
            return rollout
        owner = owner_id()
        self.store.claim(self.id, owner, self.clock())
        try:
            devices = [r.device for r in rollout.devices]
            await self.fleet.watch(devices if len(devices) <= 50 else None)
            return await self._loop(rollout)
        finally:
            self.store.release(self.id)

    async def _loop(self, rollout: rp.Rollout) -> rp.Rollout:
        while True:
            rollout = self._observe(rollout)
            decision = rp.decide(rollout)
            now = self.clock()
            if isinstance(decision, rp.Done):
                return rollout
            if isinstance(decision, rp.Publish):
                rollout = await self._publish(rollout, decision.devices)
            elif isinstance(decision, rp.Revert):
                rollout = await self._revert(rollout, decision.devices)
            elif isinstance(decision, rp.PassBatch):
                rollout = self._pass(rollout, decision.gate)
            elif isinstance(decision, rp.FailBatch):
                rollout = rp.fail_batch(rollout, decision.gate, now)
                skipped = [r for r in rollout.in_batch(rollout.batch) if r.phase == rp.Phase.SKIPPED]
                what = ("returning its devices to their previous deployment"
                        if rollout.status == rp.Status.REVERTING else "halting (--on-failure halt)")
                self._save(rollout, skipped, [f"{rollout.reason}; {what}"])
            elif isinstance(decision, rp.Halt):
                rollout = rp.halt(rollout)
                self._save(rollout, [], [f"rollout {rollout.id} HALTED: {rollout.reason}"])
            else:
                if now - self._heartbeat > HEARTBEAT_S:
                    self.store.heartbeat(self.id, now)
                    self._heartbeat = now
                await self.fleet.news(self.poll_s)

    # ---- steps

    def _save(
        self, rollout: rp.Rollout, changed: Sequence[rp.DeviceRecord], events: Sequence[str], **extra: Any
    ) -> None:
        events = [line for line in events if line]
        self.store.save(rollout, changed, events=events, now=self.clock(), **extra)
        for line in events:
            self.out(line)

    def _observe(self, rollout: rp.Rollout) -> rp.Rollout:
        now = self.clock()
        changed: list[rp.DeviceRecord] = []
        lines: list[str] = []
        for record in rollout.devices:
            new = record
            late = rp.late_watched(record)
            if late is not None:
                outcome, detail = self._outcome(record, late, rollout.policy.target)
                new = rp.late_verdict(new, outcome, detail)  # type: ignore[arg-type]
            doc = rp.watched(record)
            if doc is not None:
                outcome, detail = self._outcome(record, doc, rollout.policy.target)
                online = None
                if outcome == "pending" and now - record.since > rollout.policy.timeout_s:
                    online = self.fleet.cached_view(record.device).presence == "online"
                new = rp.observe(new, outcome, detail, now, rollout.policy, online)  # type: ignore[arg-type]
            if new != record:
                changed.append(new)
                line = transition_line(record, new)
                if line:
                    lines.append(line)
        if not changed:
            return rollout
        rollout = rp.with_records(rollout, changed)
        self._save(rollout, changed, lines)
        return rollout

    def _outcome(self, record: rp.DeviceRecord, doc: tuple[int, str], target: str) -> tuple[str, str]:
        """The device's verdict on a document, re-read only when it reported something new."""
        device = record.device
        seen = self.fleet.reported_changes(device)
        key = f"{device}@{doc[0]}"
        cached = self._read.get(key)
        if cached is None or cached[0] != seen:
            # The rollout's own document waits for the agent release it names; a return document
            # (the previous deployment) for its modules only.
            agent = agent_release(self.manifest) if doc == (record.version, record.digest) else None
            cached = (seen, self.fleet.outcome(Published(device, doc[0], doc[1], agent), target))
            self._read[key] = cached
        return cached[1]

    def _pass(self, rollout: rp.Rollout, verdict: rp.Gate) -> rp.Rollout:
        number = rollout.batch + 1
        rollout = rp.pass_batch(rollout)
        lines = [f"batch {number}/{rollout.batches} passed its gate: {verdict.describe(rollout.policy)}"]
        if rollout.status == rp.Status.COMPLETED:
            lines.append(f"rollout {rollout.id} COMPLETED: {len(rollout.devices)} devices "
                         f"{rollout.policy.target}")
        else:
            lines.append(self.batch_start_line(rollout))
        self._save(rollout, [], lines)
        return rollout

    @staticmethod
    def batch_start_line(rollout: rp.Rollout) -> str:
        size = len(rollout.in_batch(rollout.batch))
        return (f"batch {rollout.batch + 1}/{rollout.batches}: {size} device{'s' if size != 1 else ''}, "
                f"at most {rollout.policy.max_parallel} at once")

    async def _publish(self, rollout: rp.Rollout, devices: Sequence[str]) -> rp.Rollout:
        now = self.clock()
        made: list[rp.DeviceRecord] = []
        payloads: dict[str, bytes] = {}
        previous: dict[str, Previous] = {}
        items: list[tuple[str, bytes]] = []
        lines: list[str] = []
        for device in devices:
            record = rollout.record(device)
            if record.phase == rp.Phase.PUBLISHING:
                stored = self.store.payload(self.id, device)
                if stored is not None:
                    items.append((device, stored))
                    continue
            view = self.fleet.cached_view(device)
            try:
                published, payload = self.fleet.prepare(
                    view, self.manifest, self.properties, sign=self.signing.sign,
                    verify_key=self.signing.verify_key, meta={"rollout": self.id},
                )
            except FleetError as exc:
                failed = rp.mark_publish_failed(record, str(exc), now)
                made.append(failed)
                lines.append(transition_line(record, failed) or "")
                continue
            prev_version, previous[device] = previous_of(view)
            made.append(rp.mark_publishing(record, published.version, published.digest, prev_version, now))
            payloads[device] = payload
            items.append((device, payload))
        rollout = rp.with_records(rollout, made)
        self._save(rollout, made, lines, payloads=payloads, previous=previous)
        return await self._published(rollout, items)

    async def _revert(self, rollout: rp.Rollout, devices: Sequence[str]) -> rp.Rollout:
        now = self.clock()
        made: list[rp.DeviceRecord] = []
        payloads: dict[str, bytes] = {}
        items: list[tuple[str, bytes]] = []
        lines: list[str] = []
        for device in devices:
            record = rollout.record(device)
            if record.phase == rp.Phase.REVERT_PUBLISHING:
                stored = self.store.payload(self.id, device, revert=True)
                if stored is not None:
                    items.append((device, stored))
                    continue
            prev = self.store.previous(self.id, device)
            if prev is None or prev.document is None:
                why = prev.note if prev is not None else "no document was made for it"
                new = rp.mark_no_previous(record, f"left on version {record.version}: {why}", now)
                made.append(new)
                lines.append(transition_line(record, new) or "")
                continue
            view = self.fleet.cached_view(device)
            version = max(next_version(view, self.signing.verify_key), (record.version or 0) + 1)
            try:
                published, payload = self.fleet.prepare(
                    view, prev.document["deployment"], prev.document.get("properties"), version=version,
                    sign=self.signing.sign, verify_key=self.signing.verify_key,
                    meta={"rollout": self.id, "returnTo": record.previous},
                )
            except FleetError as exc:
                new = rp.mark_publish_failed(rp.mark_reverting(record, version, "", now), str(exc), now)
                made.append(new)
                lines.append(transition_line(record, new) or "")
                continue
            made.append(rp.mark_reverting(record, published.version, published.digest, now))
            payloads[device] = payload
            items.append((device, payload))
        rollout = rp.with_records(rollout, made)
        self._save(rollout, made, lines, revert_payloads=payloads)
        return await self._published(rollout, items)

    async def _published(self, rollout: rp.Rollout, items: Sequence[tuple[str, bytes]]) -> rp.Rollout:
        if not items:
            return rollout
        results = await self.fleet.publish_many(items)
        now = self.clock()
        done: list[rp.DeviceRecord] = []
        lines: list[str] = []
        for device, _ in items:
            record = rollout.record(device)
            error = results.get(device)
            new = rp.mark_published(record, now) if error is None else rp.mark_publish_failed(record, str(error), now)
            done.append(new)
            lines.append(transition_line(record, new) or "")
        rollout = rp.with_records(rollout, done)
        self._save(rollout, done, [line for line in lines if line])
        return rollout
