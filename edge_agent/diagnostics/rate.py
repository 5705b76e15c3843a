"""A token bucket (pure: the caller passes the clock): what caps the rate of remote diagnostics
requests and the bytes they send, so an operator's loop cannot make a device spend its uplink or
CPU on logs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    tokens: float = field(default=-1.0)
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_s)
        self.stamp = now if self.stamp is None else max(self.stamp, now)

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, amount: float, now: float) -> bool:
        """Take `amount` if there is that much; False (nothing taken) otherwise."""
        self._refill(now)
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` will be available."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.tokens
        return max(0.0, missing / self.refill_per_s) if self.refill_per_s > 0 else float("inf")
