"""The list key and the refresh decision of PodmanRuntime.list_containers (inspect_cache.py):
which containers a list inspects again. The entries and documents are podman 4.3.1's own (trimmed);
the same decisions against the real podman service are in
tests/integration/deployment/test_observe_cache.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edge_agent.runtime.inspect_cache import Inspected, inspect_key, list_key, refresh
from edge_agent.runtime.podman import inspected

ID_A = "4015c3d1a86568954cf61fada7c4468d336b2035ef62ad892288d7dda21d8ea4"
ID_B = "fc4bf5803662387da29fe93689647d70be395d28eeb6073d5d4830c2595a3ba9"
ZERO_LIST = -62135596800  # Go's zero time as the list gives it
ZERO_INSPECT = "0001-01-01T00:00:00Z"


def entry(cid: str = ID_A, **changes: Any) -> dict[str, Any]:
    """A list entry of a running container without a healthcheck, as podman 4.3.1 gives it."""
    doc = {"AutoRemove": False, "Command": ["sh", "-c", "sleep 100"], "Created": "2026-12-07T14:23:31.409899248Z",
           "CreatedAt": "", "Exited": False, "ExitedAt": ZERO_LIST, "ExitCode": 0, "Id": cid,
           "Image": "localhost/edge-test-busybox:1", "IsInfra": False, "Labels": {"x": "1"}, "Names": ["dp-a"],
           "Pid": 25784, "Pod": "", "StartedAt": 1796653411, "State": "running", "Status": ""}
    doc.update(changes)
    return doc


def inspect_doc(cid: str = ID_A, *, health: str | None = None, **state: Any) -> dict[str, Any]:
    """The inspect document of the container entry() describes (before `state` changes)."""
    doc: dict[str, Any] = {
        "Id": cid, "Name": "dp-a", "ImageName": "localhost/edge-test-busybox:1",
        "Config": {"Labels": {"x": "1"}},
        "State": {"Status": "running", "Running": True, "OOMKilled": False, "Pid": 25784, "ExitCode": 0,
                  "StartedAt": "2026-12-07T14:23:31.586881509Z", "FinishedAt": ZERO_INSPECT},
    }
    if health is not None:
        doc["Config"]["Healthcheck"] = {"Test": ["CMD", "true"], "Interval": 30_000_000_000}
        doc["State"]["Health"] = {"Status": health, "FailingStreak": 0, "Log": None}
    doc["State"].update(state)
    return doc


def test_a_list_entry_and_the_inspect_of_the_same_state_have_one_key() -> None:
    key = list_key(entry())
    assert key == (ID_A, "dp-a", "running", 1796653411, None, 0, 25784, "")
    assert inspected(inspect_doc()).key == key


def test_an_exited_container_keys_alike_from_the_list_and_the_inspect() -> None:
    listed = entry(State="exited", Exited=True, ExitedAt=1796653677, ExitCode=137, Pid=0)
    doc = inspect_doc(Status="exited", Running=False, Pid=0, ExitCode=137, OOMKilled=True,
                      FinishedAt="2026-12-07T14:27:57.999999999Z")
    assert inspected(doc).key == list_key(listed)
    assert inspected(doc).observed.oom_killed and inspected(doc).observed.exit_code == 137


def test_the_health_of_a_container_with_a_healthcheck_is_in_the_key() -> None:
    assert inspected(inspect_doc(health="healthy")).key == list_key(entry(Status="healthy"))
    assert inspected(inspect_doc(health="starting")).key != list_key(entry(Status="healthy"))


def test_a_health_status_left_over_without_a_healthcheck_is_not_health() -> None:
    doc = inspect_doc()
    doc["State"]["Health"] = {"Status": "healthy"}
    assert inspected(doc).key == list_key(entry(Status=""))


@pytest.mark.parametrize(("value", "expected"), [
    (ZERO_LIST, None), (None, None), (0, None), (True, None), ("1796653411", None), (1796653411, 1796653411),
    (1796653411.9, 1796653411),
])
def test_list_times_are_whole_seconds_and_the_zero_time_is_none(value: Any, expected: int | None) -> None:
    assert list_key(entry(StartedAt=value))[3] == expected


def test_inspect_times_round_down_to_the_second_the_list_shows() -> None:
    late = inspect_doc(StartedAt="2026-12-07T14:23:31.999999999Z")
    assert inspect_key(late, inspected(late).observed)[3] == 1796653411


def cached(*docs: dict[str, Any]) -> dict[str, Inspected]:
    return {d["Id"]: inspected(d) for d in docs}


def test_a_new_container_is_inspected() -> None:
    decision = refresh([entry()], {}, {}, set())
    assert decision.known == {} and decision.inspect == (ID_A,)


def test_an_unchanged_container_keeps_its_inspect() -> None:
    cache = cached(inspect_doc())
    decision = refresh([entry()], cache, {}, set())
    assert decision.known == cache and decision.inspect == ()


# Every field of the key, changed as the list would show it: the inspect is taken again.
CHANGES: list[tuple[str, Any]] = [
    ("State", "exited"), ("State", "stopping"), ("State", "paused"), ("StartedAt", 1796653412),
    ("ExitedAt", 1796653500), ("ExitCode", 137), ("Pid", 25785), ("Pid", 0), ("Status", "starting"),
    ("Status", "unhealthy"), ("Names", ["renamed"]),
]


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_any_change_the_list_shows_is_inspected_again(field: str, value: Any) -> None:
    decision = refresh([entry(**{field: value})], cached(inspect_doc()), {}, set())
    assert decision.known == {} and decision.inspect == (ID_A,)


@pytest.mark.parametrize("ref", [ID_A, "dp-a"])
def test_a_container_the_agent_acted_on_is_inspected_again_though_the_list_says_the_same(ref: str) -> None:
    decision = refresh([entry()], cached(inspect_doc()), {}, {ref})
    assert decision.known == {} and decision.inspect == (ID_A,)


def test_acting_on_one_container_keeps_the_others_inspects() -> None:
    other = inspect_doc(ID_B)
    other["Name"] = "dp-b"
    cache = cached(inspect_doc(), other)
    decision = refresh([entry(), entry(ID_B, Names=["dp-b"])], cache, {}, {ID_A})
    assert decision.known == {ID_B: cache[ID_B]} and decision.inspect == (ID_A,)


def test_an_inspect_taken_beside_the_list_stands_when_it_says_what_the_list_says() -> None:
    fresh = cached(inspect_doc())
    decision = refresh([entry()], {}, fresh, {ID_A})
    assert decision.known == fresh and decision.inspect == ()


def test_an_inspect_taken_beside_the_list_of_another_state_is_taken_again() -> None:
    # the container exited between the inspect (running) and the list
    listed = entry(State="exited", ExitedAt=1796653500, ExitCode=1, Pid=0)
    decision = refresh([listed], cached(inspect_doc()), cached(inspect_doc()), {ID_A})
    assert decision.known == {} and decision.inspect == (ID_A,)


def test_a_healthcheck_the_list_does_not_show_is_inspected_on_every_list() -> None:
    # a podman whose list entry does not carry the health: the key never matches the inspect's
    cache = cached(inspect_doc(health="healthy"))
    for status in ("", "Up 3 minutes"):
        decision = refresh([entry(Status=status)], cache, {}, set())
        assert decision.inspect == (ID_A,)


def test_containers_the_list_no_longer_shows_are_forgotten() -> None:
    other = inspect_doc(ID_B)
    other["Name"] = "dp-b"
    decision = refresh([entry()], cached(inspect_doc(), other), {}, set())
    assert set(decision.known) == {ID_A} and decision.inspect == ()


def test_the_decision_changes_neither_its_inputs() -> None:
    entries, cache = [entry(State="exited")], cached(inspect_doc())
    before = (copy.deepcopy(entries), dict(cache))
    refresh(entries, cache, {}, {ID_A})
    assert (entries, cache) == before
