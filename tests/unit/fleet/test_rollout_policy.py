"""The pure decisions of `edgectl rollout` (fleet/edgectl/rollout_policy.py): batch specs and
sizes, thresholds, gate verdicts, device transitions, what to do next, and a whole rollout driven
through decide() against simulated device verdicts."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgectl import rollout_policy as rp
from edgectl.rollout_policy import Phase, Policy, SpecError, Status

# --------------------------------------------------------------------------- --batches


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("1,10%,50%,100%", [(1, False), (10, True), (50, True), (100, True)]),
        ("100%", [(100, True)]),
        ("5", [(5, False)]),
        (" 1 , 25% ", [(1, False), (25, True)]),
        ("1,1,2", [(1, False), (1, False), (2, False)]),
        ("50%,10", [(50, True), (10, False)]),  # count vs percentage: compared once the fleet is known
    ],
)
def test_parse_batches(text: str, steps: list[tuple[int, bool]]) -> None:
    assert [(s.amount, s.percent) for s in rp.parse_batches(text)] == steps


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0", "at least one device"),
        ("0%", "at least one device"),
        ("150%", "at most 100%"),
        ("101%", "at most 100%"),
        ("", "comma-separated"),
        ("1,,2", "comma-separated"),
        ("1,", "comma-separated"),
        ("-1", "not a device count"),
        ("1.5", "not a device count"),
        ("ten", "not a device count"),
        ("%", "not a device count"),
        ("10%%", "not a device count"),
        ("50%,10%", "cannot shrink"),
        ("5,2", "cannot shrink"),
        (",".join(["1"] * 101), "at most 100"),
    ],
)
def test_parse_batches_refuses(text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        rp.parse_batches(text)


def devices(n: int) -> list[str]:
    return [f"d{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "spec", "sizes"),
    [
        (20, "1,50%,100%", [1, 9, 10]),
        (100, "1,10%,50%,100%", [1, 9, 40, 50]),
        (5, "1,10%,50%,100%", [1, 2, 2]),  # 10% of 5 rounds up to 1: that stage adds nobody
        (1, "1,10%,50%,100%", [1]),
        (3, "10", [3]),  # a count beyond the fleet is the fleet
        (10, "1,2", [1, 1, 8]),  # beyond the last stage: one final batch
        (10, "50%", [5, 5]),
        (7, "1,1,1", [1, 6]),
        (10, "50%,3", [5, 5]),  # a count below an earlier percentage adds nobody
        (0, "1,100%", []),
    ],
)
def test_plan_batches(n: int, spec: str, sizes: list[int]) -> None:
    batches = rp.plan_batches(devices(n), rp.parse_batches(spec))
    assert [len(b) for b in batches] == sizes
    assert list(itertools.chain.from_iterable(batches)) == devices(n)  # order kept, each once


@given(
    n=st.integers(0, 300),
    steps=st.lists(st.tuples(st.integers(1, 100), st.booleans()), min_size=1, max_size=8),
)
def test_plan_batches_properties(n: int, steps: list[tuple[int, bool]]) -> None:
    parsed = [rp.Step(a, p) for a, p in steps]
    batches = rp.plan_batches(devices(n), parsed)
    assert list(itertools.chain.from_iterable(batches)) == devices(n)
    assert all(batches)  # never an empty batch
    # each batch ends where a stage's target is (or at the end of the fleet)
    ends = list(itertools.accumulate(len(b) for b in batches))
    targets = {s.target(n) for s in parsed} | {n}
    assert set(ends) <= targets


@pytest.mark.parametrize(("text", "value"), [("90%", 90.0), ("100", 100.0), ("0.5%", 0.5), (" 75 % ", 75.0)])
def test_parse_percent(text: str, value: float) -> None:
    assert rp.parse_percent(text, "--success-threshold") == value


@pytest.mark.parametrize("text", ["0", "0%", "101%", "-5%", "abc", "", "nan", "inf"])
def test_parse_percent_refuses(text: str) -> None:
    with pytest.raises(SpecError, match="--success-threshold"):
        rp.parse_percent(text, "--success-threshold")


@pytest.mark.parametrize(
    ("size", "threshold", "need"),
    [(10, 100, 10), (10, 90, 9), (10, 91, 10), (9, 50, 5), (1, 1, 1), (3, 100 / 3 * 2, 2), (0, 100, 0), (7, 0.1, 1)],
)
def test_needed(size: int, threshold: float, need: int) -> None:
    assert rp.needed(size, threshold) == need


# --------------------------------------------------------------------------- gate


def rec(device: str, phase: Phase, batch: int = 0, **kw: object) -> rp.DeviceRecord:
    return replace(rp.DeviceRecord(device, batch), phase=phase, **kw)  # type: ignore[arg-type]


def batch_of(*phases: Phase) -> list[rp.DeviceRecord]:
    return [rec(f"d{i}", p) for i, p in enumerate(phases)]


P = Phase


@pytest.mark.parametrize(
    ("phases", "threshold", "verdict"),
    [
        ([P.REACHED] * 3, 100, "passed"),
        ([P.REACHED, P.REACHED, P.UPDATING], 100, "open"),
        ([P.REACHED, P.FAILED, P.UPDATING], 100, "failed"),  # fails at once: 100% cannot be reached
        ([P.REACHED, P.WAITING, P.WAITING], 100, "open"),
        ([P.FAILED], 100, "failed"),
        ([P.REACHED] * 9 + [P.FAILED], 90, "passed"),
        ([P.REACHED] * 8 + [P.FAILED] * 2, 90, "failed"),
        ([P.REACHED] * 8 + [P.FAILED, P.UPDATING], 90, "open"),  # may still make 9 of 10
        ([P.FAILED] * 5 + [P.REACHED] * 5, 50, "passed"),
        ([P.FAILED] * 6 + [P.REACHED] * 4, 50, "failed"),
        ([P.PUBLISHING, P.REACHED], 50, "open"),  # passes only once everyone settled
        ([P.FAILED, P.FAILED, P.REACHED], 1, "passed"),  # at least one must make it
        ([P.FAILED, P.FAILED, P.FAILED], 1, "failed"),
    ],
)
def test_gate(phases: list[Phase], threshold: float, verdict: str) -> None:
    assert rp.gate(batch_of(*phases), Policy(threshold=threshold)).verdict == verdict


@given(st.lists(st.sampled_from([P.WAITING, P.PUBLISHING, P.UPDATING, P.REACHED, P.FAILED]), min_size=1, max_size=30),
       st.floats(0.5, 100))
def test_gate_properties(phases: list[Phase], threshold: float) -> None:
    g = rp.gate(batch_of(*phases), Policy(threshold=threshold))
    assert g.reached + g.failed + g.pending == len(phases)
    if g.verdict == "passed":
        assert g.pending == 0 and g.reached >= g.needed
    if g.verdict == "failed":
        assert g.reached + g.pending < g.needed  # the threshold can no longer be reached
    if g.verdict == "open":
        assert g.pending > 0 and g.reached + g.pending >= g.needed


def test_gate_description() -> None:
    g = rp.gate(batch_of(P.REACHED, P.FAILED, P.UPDATING), Policy())
    assert g.describe(Policy()) == "1/3 good, 1 failed, 1 pending: more than 0 of 3 failed (success threshold 100%)"
    ok = rp.gate(batch_of(P.REACHED), Policy(target="running"))
    assert ok.describe(Policy(target="running")) == "1/1 running"


# --------------------------------------------------------------------------- device transitions

POLICY = Policy(target="good", timeout_s=60)


def updating(since: float = 100.0) -> rp.DeviceRecord:
    r = rp.mark_publishing(rp.DeviceRecord("d", 0), 7, "abc", 6, now=since)
    assert r.phase == P.PUBLISHING and (r.version, r.digest, r.previous) == (7, "abc", 6)
    r = rp.mark_published(r, since)
    assert r.phase == P.UPDATING and r.reason == "version 7 published"
    return r


def test_observe_updating() -> None:
    r = updating()
    assert rp.observe(r, "pending", "probation", 150, POLICY) == r
    reached = rp.observe(r, "reached", "good", 150, POLICY)
    assert reached.phase == P.REACHED and reached.reason == "version 7 good" and reached.since == 150
    failed = rp.observe(r, "failed", "rolled_back: module_failed: module app: exited with code 3", 150, POLICY)
    assert failed.phase == P.FAILED
    expected = "version 7 rolled_back: module_failed: module app: exited with code 3"
    assert failed.reason == failed.failed_reason == expected


def test_observe_timeout_names_the_last_report_and_presence() -> None:
    r = updating(since=100)
    assert rp.observe(r, "pending", "probation", 160, POLICY).phase == P.UPDATING  # exactly the timeout: not yet
    late = rp.observe(r, "pending", "probation (waiting)", 160.5, POLICY, online=False)
    assert late.phase == P.FAILED
    assert late.reason == ("version 7 not good within 60 s (last reported: probation (waiting)); "
                           "the device is offline")
    assert rp.observe(r, "pending", "x", 161, POLICY, online=True).reason.endswith("(last reported: x)")
    # a verdict that arrives together with the timeout wins
    assert rp.observe(r, "reached", "good", 1000, POLICY).phase == P.REACHED


@pytest.mark.parametrize("phase", [P.WAITING, P.PUBLISHING, P.REACHED, P.FAILED, P.SKIPPED, P.REVERTED,
                                   P.REVERT_FAILED, P.NO_PREVIOUS, P.REVERT_PUBLISHING])
def test_observe_changes_only_waiting_records(phase: Phase) -> None:
    r = rec("d", phase, version=7, digest="abc", since=0)
    for outcome in ("reached", "failed", "pending"):
        assert rp.observe(r, outcome, "x", 10_000, POLICY) == r  # type: ignore[arg-type]


def test_revert_transitions() -> None:
    failed = rp.observe(updating(), "failed", "rolled_back: module_failed: module app", 120, POLICY)
    back = rp.mark_reverting(failed, 9, "def", 130)
    assert back.phase == P.REVERT_PUBLISHING and (back.revert_version, back.revert_digest) == (9, "def")
    assert back.failed_reason == "version 7 rolled_back: module_failed: module app"
    assert back.reason == "returning to the deployment of version 6 as version 9"
    assert rp.watched(back) is None  # not published yet
    back = rp.mark_published(back, 131)
    assert back.phase == P.REVERTING and rp.watched(back) == (9, "def")
    done = rp.observe(back, "reached", "good", 140, POLICY)
    assert done.phase == P.REVERTED and done.reason == "version 9 (the deployment of version 6) good"
    bad = rp.observe(back, "failed", "refused: replayed: ...", 140, POLICY)
    assert bad.phase == P.REVERT_FAILED and bad.reason == "version 9 refused: replayed: ..."
    silent = rp.observe(back, "pending", "not reported yet", 131 + 61, POLICY)
    assert silent.phase == P.REVERT_FAILED and "not good within 60 s" in silent.reason


def test_revert_of_a_device_that_ran_nothing_before() -> None:
    r = rp.mark_reverting(replace(updating(), previous=None), 9, "def", 130)
    assert r.reason == "returning to the empty deployment (it ran none before) as version 9"


def test_reasons_kept_through_the_return() -> None:
    good = rp.observe(updating(), "reached", "good", 110, POLICY)
    assert rp.mark_reverting(good, 9, "d", 120).failed_reason == "version 7 reached the target, returned with its batch"
    still = rp.mark_reverting(updating(), 9, "d", 120)
    assert still.failed_reason == "version 7 had not settled when its batch failed"
    no_prev = rp.mark_no_previous(updating(), "left on version 7: unknown", 120)
    assert no_prev.phase == P.NO_PREVIOUS and no_prev.failed_reason.endswith("had not settled when its batch failed")


def test_late_verdict() -> None:
    still = rp.mark_published(rp.mark_reverting(updating(), 9, "d", 120), 121)
    assert rp.late_watched(still) == (7, "abc")
    late = rp.late_verdict(still, "failed", "rolled_back: module_failed: module app: exited with code 3")
    assert late.failed_reason == "version 7 rolled_back: module_failed: module app: exited with code 3"
    assert rp.late_watched(late) is None
    good = rp.late_verdict(still, "reached", "good")
    assert good.failed_reason == "version 7 good (after its batch failed), returned with its batch"
    assert rp.late_verdict(still, "failed", "superseded") == still  # what the return itself does
    assert rp.late_verdict(still, "pending", "probation") == still
    known = rp.mark_reverting(rp.observe(updating(), "reached", "good", 110, POLICY), 9, "d", 120)
    assert rp.late_watched(known) is None and rp.late_verdict(known, "failed", "x") == known


def test_publish_failures() -> None:
    waiting = rp.DeviceRecord("d", 0)
    failed = rp.mark_publish_failed(waiting, "d: the document is 2000000 bytes; ...", 5)
    assert failed.phase == P.FAILED and failed.failed_reason.startswith("d: the document")
    publishing = rp.mark_publishing(waiting, 7, "abc", 6, 1)
    assert rp.mark_publish_failed(publishing, "refused 0x87", 2).phase == P.FAILED
    back = rp.mark_reverting(rp.mark_published(publishing, 2), 9, "x", 3)
    assert rp.mark_publish_failed(back, "refused", 4).phase == P.REVERT_FAILED
    done = rp.observe(rp.mark_published(publishing, 2), "reached", "good", 3, POLICY)
    assert rp.mark_publish_failed(done, "x", 4) == done
    assert rp.mark_published(done, 5) == done


# --------------------------------------------------------------------------- decide


def rollout(*batches: list[rp.DeviceRecord], policy: Policy = POLICY, status: Status = Status.RUNNING,
            batch: int = 0) -> rp.Rollout:
    records = [replace(r, batch=i, device=f"b{i}-{r.device}") for i, b in enumerate(batches) for r in b]
    return rp.Rollout("r1", status, batch, len(batches), policy, tuple(records))


def test_decide_publishes_up_to_max_parallel() -> None:
    r = rollout(batch_of(*[P.WAITING] * 5), batch_of(P.WAITING), policy=replace(POLICY, max_parallel=2))
    assert rp.decide(r) == rp.Publish(("b0-d0", "b0-d1"))
    r = rollout(batch_of(P.UPDATING, P.REACHED, P.WAITING, P.WAITING), policy=replace(POLICY, max_parallel=2))
    assert rp.decide(r) == rp.Publish(("b0-d2",))  # one slot: one updating, one settled
    r = rollout(batch_of(P.UPDATING, P.UPDATING, P.WAITING), policy=replace(POLICY, max_parallel=2))
    assert rp.decide(r) == rp.Wait()


def test_decide_republishes_an_interrupted_publish_first() -> None:
    r = rollout(batch_of(P.PUBLISHING, P.UPDATING, P.WAITING), policy=replace(POLICY, max_parallel=2))
    assert rp.decide(r) == rp.Publish(("b0-d0",))  # the window is full, but the stored bytes go again


def test_decide_gates() -> None:
    passed = rp.decide(rollout(batch_of(P.REACHED, P.REACHED), batch_of(P.WAITING)))
    assert isinstance(passed, rp.PassBatch) and passed.batch == 0
    failed = rp.decide(rollout(batch_of(P.REACHED, P.FAILED, P.UPDATING), batch_of(P.WAITING)))
    assert isinstance(failed, rp.FailBatch) and failed.gate.failed == 1


def test_pass_batch_moves_on_and_completes() -> None:
    r = rollout(batch_of(P.REACHED), batch_of(P.WAITING))
    r = rp.pass_batch(r)
    assert (r.status, r.batch) == (Status.RUNNING, 1)
    assert rp.decide(r) == rp.Publish(("b1-d0",))
    r = rp.pass_batch(rp.with_records(r, [replace(r.record("b1-d0"), phase=P.REACHED)]))
    assert r.status == Status.COMPLETED and rp.decide(r) == rp.Done(Status.COMPLETED)


def test_fail_batch_rollback_returns_every_published_device_and_skips_the_rest() -> None:
    b0 = batch_of(P.REACHED, P.FAILED, P.UPDATING, P.WAITING)
    b0 = [replace(x, version=7, digest="a") if x.phase != P.WAITING else x for x in b0]
    r = rollout(b0, batch_of(P.WAITING, P.WAITING))
    decision = rp.decide(r)
    assert isinstance(decision, rp.FailBatch)
    r = rp.fail_batch(r, decision.gate, now=50)
    assert r.status == Status.REVERTING
    assert r.reason == ("batch 1 of 2 failed its gate: 1/4 good, 1 failed, 2 pending: more than 0 of 4 failed "
                        "(success threshold 100%)")
    assert r.record("b0-d3").phase == P.SKIPPED
    assert [x.phase for x in r.in_batch(1)] == [P.WAITING, P.WAITING]  # the next batch is never touched
    assert rp.decide(r) == rp.Revert(("b0-d0", "b0-d1", "b0-d2"))


def test_revert_skips_a_device_whose_document_was_never_made() -> None:
    b0 = [rec("d0", P.FAILED, reason="too large"), rec("d1", P.FAILED, version=7, digest="a")]
    r = rp.fail_batch(rollout(b0), rp.gate(b0, POLICY), 1)
    assert rp.decide(r) == rp.Revert(("b0-d1",))


def test_reverting_waits_then_halts() -> None:
    b0 = [rec("d0", P.REVERTING), rec("d1", P.REVERTED), rec("d2", P.NO_PREVIOUS)]
    r = rollout(b0, status=Status.REVERTING)
    r = replace(r, reason="batch 1 of 1 failed its gate: x")
    assert rp.decide(r) == rp.Wait()
    r = rp.with_records(r, [replace(r.record("b0-d0"), phase=P.REVERT_FAILED)])
    assert rp.decide(r) == rp.Halt()
    halted = rp.halt(r)
    assert halted.status == Status.HALTED
    assert halted.reason == ("batch 1 of 1 failed its gate: x; 1 of 3 devices of batch 1 returned to their "
                             "previous deployment")
    assert rp.decide(halted) == rp.Done(Status.HALTED)


def test_reverting_republishes_an_interrupted_return() -> None:
    r = rollout([rec("d0", P.REVERT_PUBLISHING, version=7), rec("d1", P.REVERTING)], status=Status.REVERTING)
    assert rp.decide(r) == rp.Revert(("b0-d0",))


def test_on_failure_halt_waits_for_the_batch_to_settle_and_returns_nothing() -> None:
    policy = replace(POLICY, on_failure="halt")
    b0 = [rec("d0", P.FAILED, version=7), rec("d1", P.UPDATING, version=7), rec("d2", P.PUBLISHING, version=7),
          rec("d3", P.WAITING)]
    r = rollout(b0, policy=policy)
    r = rp.fail_batch(r, rp.gate(r.in_batch(0), policy), 1)
    assert r.status == Status.HALTING and r.record("b0-d3").phase == P.SKIPPED
    assert rp.decide(r) == rp.Publish(("b0-d2",))  # its publish is finished, never a new one
    r = rp.with_records(r, [replace(r.record("b0-d2"), phase=P.UPDATING)])
    assert rp.decide(r) == rp.Wait()
    r = rp.with_records(r, [replace(r.record(d), phase=P.REACHED) for d in ("b0-d1", "b0-d2")])
    assert rp.decide(r) == rp.Halt()
    assert rp.halt(r).reason.endswith("; --on-failure halt: its devices were left as they are")


def test_new_rollout_refuses_a_device_twice() -> None:
    with pytest.raises(SpecError, match="two batches"):
        rp.new_rollout("r", [["a"], ["a"]], POLICY)


def test_batch_summary() -> None:
    r = rollout(batch_of(P.REACHED), batch_of(P.REVERTED, P.REVERTED, P.NO_PREVIOUS), batch_of(P.WAITING),
                status=Status.HALTED, batch=1)
    assert rp.batch_summary(r, 0) == "passed: 1 reached"
    assert rp.batch_summary(r, 1) == "failed: 1 no_previous, 2 reverted"
    assert rp.batch_summary(r, 2) == "not started: never changed"


# --------------------------------------------------------------------------- a whole rollout

Verdict = dict[str, str]  # device -> "good" | "crash" | "silent"


def simulate(n: int, spec: str, verdicts: Verdict, policy: Policy) -> rp.Rollout:
    """Drive decide() to the end. Devices answer right after their publish (or never: silent ones
    time out); returns are always good."""
    r = rp.new_rollout("r", rp.plan_batches(devices(n), rp.parse_batches(spec)), policy)
    now = 0.0
    for _ in range(10_000):
        now += 1
        changed = []
        for x in r.devices:
            if x.phase == P.UPDATING:
                v = verdicts.get(x.device, "good")
                if v == "good":
                    changed.append(rp.observe(x, "reached", "good", now, policy))
                elif v == "crash":
                    changed.append(rp.observe(x, "failed", "rolled_back: module_failed: module app", now, policy))
                else:
                    changed.append(rp.observe(x, "pending", "not reported yet", now, policy, online=False))
            elif x.phase == P.REVERTING:
                changed.append(rp.observe(x, "reached", "good", now, policy))
        r = rp.with_records(r, changed)
        d = rp.decide(r)
        if isinstance(d, rp.Done):
            return r
        if isinstance(d, rp.Publish):
            r = rp.with_records(r, [rp.mark_published(rp.mark_publishing(r.record(x), 5, "h", 4, now), now)
                                    for x in d.devices])
        elif isinstance(d, rp.Revert):
            r = rp.with_records(r, [rp.mark_published(rp.mark_reverting(r.record(x), 6, "g", now), now)
                                    for x in d.devices])
        elif isinstance(d, rp.PassBatch):
            r = rp.pass_batch(r)
        elif isinstance(d, rp.FailBatch):
            r = rp.fail_batch(r, d.gate, now)
        elif isinstance(d, rp.Halt):
            r = rp.halt(r)
    raise AssertionError("the rollout never finished")


def test_simulated_rollout_completes() -> None:
    r = simulate(100, "1,10%,50%,100%", {}, replace(POLICY, max_parallel=7))
    assert r.status == Status.COMPLETED and all(x.phase == P.REACHED for x in r.devices)


def test_simulated_rollout_halts_at_the_failing_batch() -> None:
    r = simulate(20, "1,50%,100%", {"d005": "crash"}, replace(POLICY, max_parallel=3))
    assert r.status == Status.HALTED and r.batch == 1
    assert all(x.phase == P.REACHED for x in r.in_batch(0))
    assert all(x.phase in (P.REVERTED, P.SKIPPED) for x in r.in_batch(1))
    assert r.record("d005").failed_reason == "version 5 rolled_back: module_failed: module app"
    assert all(x.phase == P.WAITING for x in r.in_batch(2))


def test_simulated_threshold_tolerates_failures() -> None:
    r = simulate(20, "1,50%,100%", {"d005": "crash", "d015": "silent"},
                 replace(POLICY, max_parallel=20, threshold=80, timeout_s=30))
    assert r.status == Status.COMPLETED
    assert r.record("d015").phase == P.FAILED and "not good within 30 s" in r.record("d015").reason


def test_simulated_silent_device_times_out_and_halts() -> None:
    r = simulate(3, "1,100%", {"d000": "silent"}, replace(POLICY, timeout_s=30))
    assert r.status == Status.HALTED and r.batch == 0
    assert r.record("d000").failed_reason.endswith("the device is offline")


@given(
    n=st.integers(1, 40),
    spec=st.sampled_from(["1,10%,50%,100%", "100%", "1,2,3", "25%,50%", "5"]),
    bad=st.sets(st.integers(0, 39), max_size=5),
    parallel=st.integers(1, 12),
    threshold=st.sampled_from([50.0, 90.0, 100.0]),
    on_failure=st.sampled_from(["rollback", "halt"]),
)
def test_simulated_rollouts_always_finish_consistently(
    n: int, spec: str, bad: set[int], parallel: int, threshold: float, on_failure: rp.OnFailure
) -> None:
    verdicts = {f"d{i:03d}": "crash" for i in bad if i < n}
    r = simulate(n, spec, verdicts, Policy(max_parallel=parallel, threshold=threshold, on_failure=on_failure))
    assert r.status in (Status.COMPLETED, Status.HALTED)
    for x in r.devices:
        if x.batch > r.batch:
            assert x.phase == P.WAITING  # batches after the last one started are never touched
        if x.batch < r.batch:
            assert x.phase in (P.REACHED, P.FAILED)  # passed batches keep their verdicts
    if r.status == Status.COMPLETED:
        assert all(x.phase in (P.REACHED, P.FAILED) for x in r.devices)
    else:
        phases = {x.phase for x in r.in_batch(r.batch)}
        allowed = {P.REVERTED, P.SKIPPED} if on_failure == "rollback" else {P.REACHED, P.FAILED, P.SKIPPED}
        assert phases <= allowed
