"""Pure decisions of the telemetry queue: per-stream rules, admission at the byte cap (which
records to evict, which incoming records to refuse), TTL cut-offs and which stream to upload next.

No I/O here; queue.py feeds these functions what it read from SQLite and applies the result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.config import TelemetrySection

AtCap = Literal["drop-oldest", "refuse-new"]
DEFAULT_PRIORITY = 5
# Bytes counted per record besides payload, stream and module names: id, seq, timestamps,
# priority, row header and the two index entries (measured: bench/telemetry_bench.py).
ROW_OVERHEAD = 64


@dataclass(frozen=True)
class StreamRules:
    priority: int | None  # forced priority (operator override) or None: the module's choice
    policy: AtCap
    ttl_s: int  # 0 = no expiry


@dataclass(frozen=True)
class Rules:
    default: StreamRules
    streams: Mapping[str, StreamRules] = field(default_factory=dict)

    def for_stream(self, stream: str) -> StreamRules:
        return self.streams.get(stream, self.default)

    def priority(self, stream: str, requested: int) -> int:
        forced = self.for_stream(stream).priority
        return requested if forced is None else forced

    def evictable(self, stream: str) -> bool:
        return self.for_stream(stream).policy == "drop-oldest"


def rules_from_config(section: TelemetrySection) -> Rules:
    default = StreamRules(None, section.default_policy, section.default_ttl_s)
    streams = {
        name: StreamRules(
            o.priority,
            o.policy if o.policy is not None else default.policy,
            o.ttl_s if o.ttl_s is not None else default.ttl_s,
        )
        for name, o in section.streams.items()
    }
    return Rules(default, streams)


def record_cost(stream: str, module: str, payload_len: int) -> int:
    """Bytes a record counts against the cap."""
    return payload_len + len(stream) + len(module) + ROW_OVERHEAD


@dataclass(frozen=True)
class Incoming:
    stream: str
    priority: int  # effective priority
    cost: int
    policy: AtCap


@dataclass(frozen=True)
class Candidate:
    """A queued record that may be evicted (its stream's policy is drop-oldest)."""

    rowid: int
    stream: str
    priority: int
    cost: int


@dataclass(frozen=True)
class Admission:
    accepted: tuple[bool, ...]  # per incoming record, in order
    evicted: tuple[Candidate, ...]  # queued records to delete (counted as "evicted")
    evicted_incoming: tuple[int, ...]  # indexes of accepted incoming records evicted by later ones
    used_after: int


def plan_admission(
    incoming: Sequence[Incoming], used_bytes: int, cap_bytes: int, candidates: Iterable[Candidate]
) -> Admission:
    """Admit a group of records in order against the byte cap.

    At the cap a record may evict records that are as urgent as it or less (priority number >= its
    own), least urgent first, oldest first within a priority, and only from drop-oldest streams. A
    record of a refuse-new stream never evicts; a record that would need to evict more than can be
    evicted is refused and evicts nothing. Records accepted earlier in the same group are eviction
    candidates too (newest of all, so last within their priority).
    """
    cands = list(candidates)
    # priority -> evictable records in eviction order: (kind "q"ueued or "i"ncoming, key, cost)
    by_priority: dict[int, deque[tuple[str, int, int]]] = {}
    for c in cands:
        by_priority.setdefault(c.priority, deque()).append(("q", c.rowid, c.cost))
    cand_index = {c.rowid: c for c in cands}
    used = used_bytes
    accepted: list[bool] = []
    evicted: list[Candidate] = []
    evicted_incoming: list[int] = []
    for index, rec in enumerate(incoming):
        need = used + rec.cost - cap_bytes
        if need <= 0:
            accepted.append(True)
            used += rec.cost
            if rec.policy == "drop-oldest":
                by_priority.setdefault(rec.priority, deque()).append(("i", index, rec.cost))
            continue
        if rec.policy == "refuse-new" or rec.cost > cap_bytes:
            accepted.append(False)
            continue
        # Find enough to free among priorities >= rec.priority, least urgent first.
        chosen: list[tuple[int, tuple[str, int, int]]] = []
        freed = 0
        for prio in sorted((p for p in by_priority if p >= rec.priority), reverse=True):
            for item in by_priority[prio]:
                if freed >= need:
                    break
                chosen.append((prio, item))
                freed += item[2]
            if freed >= need:
                break
        if freed < need:
            accepted.append(False)
            continue
        for prio, item in chosen:
            by_priority[prio].popleft()
            if not by_priority[prio]:
                del by_priority[prio]
            kind, key, cost = item
            if kind == "q":
                evicted.append(cand_index[key])
            else:
                evicted_incoming.append(key)
            used -= cost
        accepted.append(True)
        used += rec.cost
        by_priority.setdefault(rec.priority, deque()).append(("i", index, rec.cost))
    return Admission(tuple(accepted), tuple(evicted), tuple(evicted_incoming), used)


def expiry_cutoffs(rules: Rules, streams: Iterable[str], now: float) -> dict[str, float]:
    """Per stream, the receive time before which records have expired (streams without TTL omitted)."""
    out: dict[str, float] = {}
    for stream in streams:
        ttl = rules.for_stream(stream).ttl_s
        if ttl > 0:
            out[stream] = now - ttl
    return out


@dataclass(frozen=True)
class StreamHead:
    """What the uplink needs to know to pick a stream: its most urgent pending priority and the
    age (insert order) of its oldest pending record."""

    min_priority: int
    head_rowid: int


def choose_stream(heads: Mapping[str, StreamHead], busy: Iterable[str] = ()) -> str | None:
    """The stream to upload next: the one holding the most urgent record, then the oldest head.
    Records of a stream always go in order, so a stream's urgency is its most urgent record's."""
    skip = set(busy)
    best: tuple[int, int, str] | None = None
    for stream, head in heads.items():
        if stream in skip:
            continue
        key = (head.min_priority, head.head_rowid, stream)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]
