"""The agent's one backoff: capped exponential delays (initial, 2x, 4x ... up to the cap).

- `delay_after(attempts, initial, cap)`: pure, the delay after that many consecutive failures;
  module restarts (deployment/restart_policy.py) use it too.
- `Backoff`: one retry loop's sequence (`next()` the delay to wait now, `reset()` after success):
  a pull, an upload, a component restarted by the supervisor.
- `Retries`: per cause, with a log line per change of state. A cause is a name for one thing that
  can fail on its own ("runtime", "module:pilot", "pin"). Each failing cause waits its delay
  before its next attempt, whatever wakes the loop in between (a podman event, the poll timer); a
  success forgets it. `failed()` says whether the failure is news (first failure, or a different
  error than last time), so a persistent failure is logged once, not once per attempt;
  `succeeded()` returns the cleared failure so the recovery can be logged once too.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INITIAL_S = 2.0
DEFAULT_CAP_S = 60.0


@dataclass(frozen=True)
class Failure:
    error: str
    attempts: int  # consecutive failed attempts
    since: float  # first failure of this run
    next_at: float  # no attempt before this time
    delay: float  # the gap before next_at


def delay_after(attempts: int, initial_s: float, cap_s: float) -> float:
    """Pure: the delay after `attempts` consecutive failures (1: initial_s)."""
    return float(min(cap_s, initial_s * 2 ** min(max(attempts, 1) - 1, 60)))


class Backoff:
    """The delays of one retry loop: initial, 2x, 4x ... up to the cap; reset() after a success."""

    def __init__(self, initial_s: float = DEFAULT_INITIAL_S, cap_s: float = DEFAULT_CAP_S) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.attempts = 0

    def next(self) -> float:
        """Record one more failure; the delay to wait before the next attempt."""
        self.attempts += 1
        return delay_after(self.attempts, self.initial_s, self.cap_s)

    def reset(self) -> None:
        self.attempts = 0


def next_failure(previous: Failure | None, error: str, now: float, initial_s: float, cap_s: float) -> Failure:
    """Pure: the failure state after one more failed attempt."""
    attempts = 1 if previous is None else previous.attempts + 1
    delay = delay_after(attempts, initial_s, cap_s)
    since = now if previous is None else previous.since
    return Failure(error, attempts, since, now + delay, delay)


class Retries:
    def __init__(self, initial_s: float = DEFAULT_INITIAL_S, cap_s: float = DEFAULT_CAP_S) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._failures: dict[str, Failure] = {}

    def due(self, cause: str, now: float) -> bool:
        failure = self._failures.get(cause)
        return failure is None or now >= failure.next_at

    def get(self, cause: str) -> Failure | None:
        return self._failures.get(cause)

    def failed(self, cause: str, error: str, now: float) -> tuple[Failure, bool]:
        """Record a failed attempt; returns (the failure, whether it is news worth a log line)."""
        previous = self._failures.get(cause)
        failure = next_failure(previous, error, now, self.initial_s, self.cap_s)
        self._failures[cause] = failure
        return failure, previous is None or previous.error != error

    def succeeded(self, cause: str) -> Failure | None:
        return self._failures.pop(cause, None)

    def forget(self, prefix: str) -> None:
        for cause in [c for c in self._failures if c.startswith(prefix)]:
            del self._failures[cause]

    def next_at(self) -> float | None:
        return min((f.next_at for f in self._failures.values()), default=None)

    def causes(self) -> dict[str, Failure]:
        return dict(self._failures)
