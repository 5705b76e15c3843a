"""Capped exponential backoff per cause (shared/edge_shared/retry.py)."""

from __future__ import annotations

import pytest

from edge_shared.retry import Failure, Retries, next_failure


def test_delays_double_up_to_the_cap() -> None:
    failure: Failure | None = None
    delays = []
    for attempt in range(1, 9):
        now = 100.0 + attempt
        failure = next_failure(failure, "podman down", now, 2.0, 60.0)
        assert failure.attempts == attempt
        assert failure.since == 101.0  # the first failure of the run
        assert failure.next_at == pytest.approx(now + failure.delay)
        delays.append(failure.delay)
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_next_failure_starts_fresh_without_a_previous_one() -> None:
    first = next_failure(None, "e", 5.0, 0.5, 10.0)
    assert first == Failure("e", 1, 5.0, 5.5, 0.5)


def test_cap_below_initial_caps_the_first_delay() -> None:
    assert next_failure(None, "e", 0.0, 10.0, 3.0).delay == 3.0


def test_due_holds_back_until_next_at() -> None:
    retries = Retries(2.0, 60.0)
    assert retries.due("runtime", 0.0)  # never failed
    retries.failed("runtime", "podman down", 10.0)
    assert not retries.due("runtime", 10.0)
    assert not retries.due("runtime", 11.99)
    assert retries.due("runtime", 12.0)
    retries.failed("runtime", "podman down", 12.0)  # second failure: 4 s
    assert not retries.due("runtime", 15.9)
    assert retries.due("runtime", 16.0)
    assert retries.due("module:pilot", 12.0)  # per cause: another cause is not held back


def test_failed_is_news_only_on_first_failure_or_changed_error() -> None:
    retries = Retries(1.0, 8.0)
    assert retries.failed("runtime", "podman down", 0.0)[1] is True
    assert retries.failed("runtime", "podman down", 1.0)[1] is False
    assert retries.failed("runtime", "podman down", 3.0)[1] is False
    failure, news = retries.failed("runtime", "permission denied", 7.0)
    assert news is True
    assert failure.attempts == 4 and failure.delay == 8.0  # a new error does not reset the backoff
    assert retries.failed("runtime", "permission denied", 15.0)[1] is False


def test_succeeded_returns_the_cleared_failure_and_forgets_it() -> None:
    retries = Retries(1.0, 8.0)
    assert retries.succeeded("runtime") is None
    retries.failed("runtime", "podman down", 0.0)
    retries.failed("runtime", "podman down", 1.0)
    cleared = retries.succeeded("runtime")
    assert cleared is not None and cleared.attempts == 2 and cleared.error == "podman down"
    assert retries.get("runtime") is None and retries.due("runtime", 0.0)
    assert retries.succeeded("runtime") is None
    # After a success the next failure is news again and starts at the initial delay.
    failure, news = retries.failed("runtime", "podman down", 50.0)
    assert news and failure.attempts == 1 and failure.delay == 1.0


def test_forget_by_prefix_and_next_at() -> None:
    retries = Retries(1.0, 8.0)
    assert retries.next_at() is None
    retries.failed("pin", "x", 10.0)
    retries.failed("module:a", "x", 0.0)
    retries.failed("module:b", "x", 3.0)
    assert retries.next_at() == 1.0
    retries.forget("module:")
    assert set(retries.causes()) == {"pin"}
    assert retries.next_at() == 11.0
