"""What `edgectl rollout` now says and does about refused, offline and tolerated devices, and its
lease (fleet/edgectl/rollout_policy.py, rollout.previous_of, rollout_cmd's listing). Pure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgectl import rollout_policy as rp
from edgectl.client import DeviceView
from edgectl.rollout import previous_of
from edgectl.rollout_cmd import render_list
from edgectl.rollout_policy import Phase, Policy, Status
from edgectl.rollout_store import Previous, RolloutMeta, RolloutStore, owner_id

P = Phase
POLICY = Policy(target="good", timeout_s=60, threshold=80.0, max_parallel=20)


def rec(device: str, phase: Phase, **kw: object) -> rp.DeviceRecord:
    return replace(rp.DeviceRecord(device, 0), phase=phase, **kw)  # type: ignore[arg-type]


def updating() -> rp.DeviceRecord:
    return rp.mark_published(rp.mark_publishing(rp.DeviceRecord("d", 0), 7, "abc", 6, now=100), 100)


def twenty(last: Phase) -> rp.Rollout:
    records = [rec(f"d{i:02d}", P.REACHED, version=3, digest="x") for i in range(19)] + [rec("d19", last)]
    return rp.Rollout("r1", Status.RUNNING, 0, 1, POLICY, tuple(records))


@pytest.mark.parametrize(("last", "words"), [
    (P.OFFLINE, "19 good, 1 offline"), (P.FAILED, "19 good, 1 failed"), (P.REFUSED, "19 good, 1 refused"),
])
def test_eighty_percent_with_one_device_not_good_completes_and_says_so(last: Phase, words: str) -> None:
    r = twenty(last)
    decision = rp.decide(r)
    assert isinstance(decision, rp.PassBatch)
    assert decision.gate.describe(POLICY).startswith(f"19/20 good, 1 {words.rsplit(' ', 1)[1]}")
    done = rp.pass_batch(r)
    assert done.status == Status.COMPLETED
    assert rp.final_line(done) == f"rollout r1 COMPLETED: {words}"
    counts = rp.outcome_counts(done)
    assert counts["good"] == 19 and sum(counts.values()) == 20


def test_the_gate_counts_refused_and_offline_against_the_threshold() -> None:
    records = [rec("a", P.REACHED), rec("b", P.REFUSED), rec("c", P.OFFLINE), rec("d", P.FAILED)]
    verdict = rp.gate(records, Policy(threshold=50.0))
    assert (verdict.verdict, verdict.failed, verdict.refused, verdict.offline) == ("failed", 3, 1, 1)
    assert verdict.describe(Policy(threshold=50.0)).startswith("1/4 good, 1 failed, 1 refused, 1 offline")
    assert rp.gate(records[:3], Policy(threshold=30.0)).verdict == "passed"


def test_a_refused_or_rejected_document_is_refused_not_failed() -> None:
    for detail in ("refused: untrusted_key: signed by ab12", "refused: rollout_in_flight: rollout r0 holds ...",
                   "rejected: image_unsigned: module app: no signature"):
        got = rp.observe(updating(), "failed", detail, 120, POLICY)
        assert got.phase == P.REFUSED and got.reason == got.failed_reason == f"version 7 {detail}"
    for detail in ("rolled_back: module_failed: module app: exited", "failed: probation", "superseded"):
        assert rp.observe(updating(), "failed", detail, 120, POLICY).phase == P.FAILED


def test_nobody_is_returned_when_nobody_left_their_deployment() -> None:
    batch = [rec("a", P.REFUSED, version=7, digest="x"), rec("b", P.REFUSED, version=7, digest="y"),
             rec("c", P.OFFLINE), rec("d", P.WAITING)]
    r = rp.Rollout("r1", Status.RUNNING, 0, 1, Policy(threshold=100.0), tuple(batch))
    decision = rp.decide(r)
    assert isinstance(decision, rp.FailBatch)
    r = rp.fail_batch(r, decision.gate, 50)
    assert r.status == Status.REVERTING and r.record("d").phase == P.SKIPPED
    assert rp.decide(r) == rp.Halt()  # no Revert: a refused, offline or skipped device never left
    halted = rp.halt(r)
    assert halted.reason.endswith("; no device of it left its deployment: nothing to return")
    assert rp.final_line(halted) == "rollout r1 HALTED: 2 refused, 1 offline, 1 skipped"
    # a device that took it (failed after the commit) is returned; a refused one beside it is not
    mixed = replace(r, devices=(rec("a", P.REFUSED, version=7, digest="x"), rec("e", P.FAILED, version=7, digest="z")))
    assert rp.decide(mixed) == rp.Revert(("e",))


def test_mark_offline_is_settled_and_named() -> None:
    r = rp.mark_offline(rp.DeviceRecord("d", 0), "3 min ago", 10)
    assert r.phase == P.OFFLINE and r.reason == "offline (last seen 3 min ago): not published (--offline skip)"
    assert rp.watched(r) is None  # nothing to wait for


def test_an_offline_device_is_not_waited_on_for_its_return() -> None:
    returning = rp.mark_published(rp.mark_reverting(rec("d", P.FAILED, version=7, digest="x", previous=6), 8, "y",
                                                    200), 200)
    assert returning.phase == P.REVERTING
    assert rp.observe(returning, "pending", "not received yet", 201, POLICY, online=True) == returning
    queued = rp.observe(returning, "pending", "not received yet", 201, POLICY, online=False)
    assert queued.phase == P.REVERT_QUEUED and queued.since == 201  # at once, not after the timeout
    assert "offline and gets it when it reconnects" in queued.reason
    r = rp.Rollout("r1", Status.REVERTING, 0, 1, POLICY, (queued,))
    assert rp.decide(r) == rp.Halt()
    assert "returned to their previous deployment (1 offline: the return waits for them on the broker)" in \
        rp.halt(r).reason
    # an online one still gets its timeout
    late = rp.observe(returning, "pending", "verifying", 200 + 61, POLICY, online=True)
    assert late.phase == P.REVERT_FAILED


@pytest.mark.parametrize(("size", "parallel", "timeout", "lease"), [
    (1, 10, 300.0, 660.0), (10, 10, 300.0, 660.0), (11, 10, 300.0, 960.0), (20, 1, 30.0, 690.0),
])
def test_the_lease_covers_the_batch_and_its_return(size: int, parallel: int, timeout: float, lease: float) -> None:
    assert rp.lease_s(Policy(timeout_s=timeout, max_parallel=parallel), size) == lease


def _section(current: int | None, good: int | None, states: dict[int, str]) -> dict[str, object]:
    return {"current": current, "lastKnownGood": good,
            "versions": {str(v): {"state": s, "digest": "d" * 64} for v, s in states.items()}}


def test_a_return_goes_to_the_last_good_deployment_never_to_an_unsettled_one() -> None:
    empty = DeviceView("d", reported={"deployment": _section(None, None, {})})
    assert previous_of(empty) == (None, Previous({"deployment": {"modules": {}}},
                                                 "it ran no deployment before: the empty one"))
    unsettled = DeviceView("d", reported={"deployment": _section(5, 4, {4: "good", 5: "probation"})})
    version, prev = previous_of(unsettled)
    assert version == 4 and prev.document is None
    assert prev.note == ("it ran version 5 (probation), not a good one, and the document of its last good version (4) "
                         "is not on the broker")
    crashed = DeviceView("d", reported={"deployment": _section(5, None, {5: "failed"})})
    assert previous_of(crashed)[1].document is None


def test_a_sigkilled_rollout_is_listed_as_interrupted(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "s.db")
    for rid in ("live", "dead", "done"):
        store.create(rp.new_rollout(rid, [["a"]], Policy()), RolloutMeta(
            1000.0, 1000.0, "edge", "x=y", "100%", "m.json", {"modules": {}}, None, None, "30d"))
    now = 5000.0
    store.claim("live", owner_id(), now)
    store.claim("dead", f"{owner_id().rpartition(':')[0]}:999999999", now)  # its process is gone
    done = rp.new_rollout("done", [["a"]], Policy())
    store.save(replace(done, status=Status.COMPLETED), now=now)
    rows = {line.split()[0]: line for line in render_list(store.list(), now, store.path).splitlines()[1:]}
    assert "running (interrupted)" in rows["dead"]
    assert "running" in rows["live"] and "interrupted" not in rows["live"]
    assert "completed" in rows["done"] and "interrupted" not in rows["done"]
    assert store.finished("done") and not store.finished("live") and not store.finished("nope")


def test_a_device_that_has_not_answered_is_asked_before_it_is_returned() -> None:
    silent = updating()
    assert rp.unheard(silent)
    answered = rp.observe(silent, "pending", "verifying (registry unreachable)", 101, POLICY)
    assert not rp.unheard(answered) and answered.reason == "version 7 verifying (registry unreachable)"
    failed = rec("f", P.FAILED, version=7, digest="x")
    r = rp.Rollout("r1", Status.REVERTING, 0, 1, POLICY, (failed, replace(silent, device="s")))
    assert rp.decide(r) == rp.Revert(("f",))  # the silent one is not returned yet
    r = replace(r, devices=(rec("f", P.REVERTED), replace(silent, device="s")))
    assert rp.decide(r) == rp.Wait()  # ... and the rollout waits for its answer (or its timeout)
    refused = rp.observe(replace(silent, device="s"), "failed", "refused: untrusted_key: x", 102, POLICY)
    assert refused.phase == P.REFUSED
    r = replace(r, devices=(rec("f", P.REVERTED), refused))
    assert rp.decide(r) == rp.Halt()  # never returned: it never took the document
    r = replace(r, devices=(rec("f", P.REVERTED), replace(answered, device="s")))
    assert rp.decide(r) == rp.Revert(("s",))  # it answered: it passed its gate, it goes back
