"""Pure queue decisions: admission at the cap, eviction order, TTL cut-offs, stream choice."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import TelemetrySection, TelemetryStreamSection
from edge_agent.telemetry.policy import (
    Candidate,
    Incoming,
    Rules,
    StreamHead,
    StreamRules,
    choose_stream,
    expiry_cutoffs,
    plan_admission,
    record_cost,
    rules_from_config,
)

candidates_st = st.lists(
    st.tuples(st.integers(0, 9), st.integers(1, 300)), max_size=30
).map(lambda xs: [Candidate(n + 1, f"s{p}", p, c) for n, (p, c) in enumerate(xs)])
incoming_st = st.lists(
    st.tuples(st.integers(0, 9), st.integers(1, 400), st.sampled_from(["drop-oldest", "refuse-new"])), max_size=20
).map(lambda xs: [Incoming(f"i{p}", p, c, pol) for p, c, pol in xs])  # type: ignore[arg-type]


def eviction_order(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (-c.priority, c.rowid))


@settings(max_examples=400)
@given(cands=candidates_st, incoming=incoming_st, cap=st.integers(100, 3000), slack=st.integers(0, 500))
def test_admission_invariants(cands: list[Candidate], incoming: list[Incoming], cap: int, slack: int) -> None:
    cands = eviction_order(cands)
    used = max(0, min(cap, sum(c.cost for c in cands)) - slack)
    plan = plan_admission(incoming, used, cap, cands)
    assert len(plan.accepted) == len(incoming)
    # Honest bookkeeping, and the cap holds.
    accepted_cost = sum(i.cost for i, ok in zip(incoming, plan.accepted, strict=True) if ok)
    evicted_cost = sum(c.cost for c in plan.evicted) + sum(incoming[i].cost for i in plan.evicted_incoming)
    assert plan.used_after == used + accepted_cost - evicted_cost
    assert plan.used_after <= cap
    # Only accepted drop-oldest incoming records can be evicted later in the group.
    for i in plan.evicted_incoming:
        assert plan.accepted[i] and incoming[i].policy == "drop-oldest"
    # Within a priority, queued records go oldest first.
    for prio in {c.priority for c in plan.evicted}:
        gone = sorted(c.rowid for c in plan.evicted if c.priority == prio)
        same = sorted(c.rowid for c in cands if c.priority == prio)
        assert gone == same[: len(gone)]
    # Nothing more urgent than every evicting record is evicted.
    evictors = [i for i, ok in zip(incoming, plan.accepted, strict=True) if ok and i.policy == "drop-oldest"]
    if plan.evicted:
        assert evictors
        assert min(c.priority for c in plan.evicted) >= min(i.priority for i in evictors)
    # A refuse-new group never evicts.
    if all(i.policy == "refuse-new" for i in incoming):
        assert not plan.evicted and not plan.evicted_incoming


@given(incoming=incoming_st, cap=st.integers(100, 3000))
def test_with_room_everything_is_accepted_and_nothing_evicted(incoming: list[Incoming], cap: int) -> None:
    total = sum(i.cost for i in incoming)
    plan = plan_admission(incoming, 0, max(cap, total), [Candidate(1, "x", 9, 10)])
    assert all(plan.accepted) and not plan.evicted and not plan.evicted_incoming


def test_drop_oldest_evicts_least_urgent_oldest_first() -> None:
    cands = eviction_order([Candidate(1, "a", 5, 100), Candidate(2, "b", 9, 100), Candidate(3, "b", 9, 100)])
    plan = plan_admission([Incoming("c", 5, 150, "drop-oldest")], 300, 300, cands)
    assert plan.accepted == (True,)
    assert [c.rowid for c in plan.evicted] == [2, 3]
    assert plan.used_after == 250


def test_bulk_never_evicts_alerts() -> None:
    cands = [Candidate(1, "alerts", 0, 100)]
    plan = plan_admission([Incoming("bulk", 9, 50, "drop-oldest")], 100, 120, cands)
    assert plan.accepted == (False,) and not plan.evicted


def test_refuse_new_is_refused_at_cap_even_if_others_could_be_dropped() -> None:
    plan = plan_admission([Incoming("keep", 0, 50, "refuse-new")], 100, 120, [Candidate(1, "bulk", 9, 100)])
    assert plan.accepted == (False,) and not plan.evicted


def test_refused_record_evicts_nothing_when_not_enough_can_go() -> None:
    cands = [Candidate(1, "bulk", 9, 10)]
    plan = plan_admission([Incoming("bulk", 9, 100, "drop-oldest")], 100, 100, cands)
    assert plan.accepted == (False,) and plan.evicted == ()


def test_record_larger_than_cap_is_refused() -> None:
    assert plan_admission([Incoming("s", 5, 1000, "drop-oldest")], 0, 999, []).accepted == (False,)


def test_later_record_of_same_group_evicts_earlier_one() -> None:
    inc = [Incoming("s", 5, 60, "drop-oldest"), Incoming("s", 5, 60, "drop-oldest")]
    plan = plan_admission(inc, 0, 100, [])
    assert plan.accepted == (True, True) and plan.evicted_incoming == (0,) and plan.used_after == 60


def test_rules_from_config_and_priority_override() -> None:
    section = TelemetrySection(
        default_policy="drop-oldest",
        default_ttl_s=100,
        streams={"alerts": TelemetryStreamSection(priority=0, policy="refuse-new")},
    )
    rules = rules_from_config(section)
    assert rules.for_stream("alerts") == StreamRules(0, "refuse-new", 100)
    assert rules.priority("alerts", 9) == 0 and rules.priority("other", 7) == 7
    assert not rules.evictable("alerts") and rules.evictable("other")


def test_expiry_cutoffs() -> None:
    rules = Rules(StreamRules(None, "drop-oldest", 10), {"forever": StreamRules(None, "drop-oldest", 0)})
    assert expiry_cutoffs(rules, ["a", "forever"], 100.0) == {"a": 90.0}


def test_choose_stream_most_urgent_then_oldest() -> None:
    heads = {"bulk": StreamHead(9, 1), "alerts": StreamHead(0, 50), "mid": StreamHead(5, 2), "mid2": StreamHead(5, 1)}
    assert choose_stream(heads) == "alerts"
    assert choose_stream(heads, busy={"alerts"}) == "mid2"
    assert choose_stream({}) is None


def test_record_cost_counts_names_and_overhead() -> None:
    assert record_cost("s", "mod", 10) == 10 + 1 + 3 + 64
