"""The pure actuation decision and fault policy (edge_pilot.actuation), exhaustively."""

from __future__ import annotations

import itertools
import math

import pytest
from edge_pilot.actuation import OUTPUT_LIMIT, Command, Fault, FaultCounter, FaultPolicy, decide, output_fault
from edge_pilot.actuator import Calibration
from hypothesis import given
from hypothesis import strategies as st

SPECIAL = [math.nan, math.inf, -math.inf, -1e308, 1e308, -OUTPUT_LIMIT - 1e-9, OUTPUT_LIMIT + 1e-9,
           -OUTPUT_LIMIT, OUTPUT_LIMIT, -1.2, 1.2, -1.0, 1.0, -0.3, 0.0, -0.0, 0.3, 5e-324]
NEUTRAL = Command(0.0, 0.0)


def sound(v: float) -> bool:
    return math.isfinite(v) and abs(v) <= OUTPUT_LIMIT


@pytest.mark.parametrize(("angle", "throttle"), list(itertools.product(SPECIAL, SPECIAL)))
@pytest.mark.parametrize("max_throttle", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("constant", [None, 0.25, -0.4])
def test_every_pair_of_special_outputs(angle: float, throttle: float, max_throttle: float,
                                       constant: float | None) -> None:
    d = decide(angle, throttle, max_throttle, constant)
    if sound(angle) and sound(throttle):
        assert isinstance(d, Command)
        assert d.angle == max(-1.0, min(1.0, angle))
        want = constant if constant is not None else throttle
        assert d.throttle == max(-max_throttle, min(max_throttle, want))
    else:
        assert isinstance(d, Fault) and d.command == NEUTRAL
        bad = [n for n, v in (("angle", angle), ("throttle", throttle)) if not sound(v)]
        assert all(f"{n}=" in d.reason for n in bad), d.reason
        assert ("non-finite" in d.reason) == any(not math.isfinite(v) for v in (angle, throttle))


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True),
       st.floats(allow_nan=True, allow_infinity=True), st.none() | st.floats(-1, 1))
def test_a_command_is_always_finite_and_in_range(angle: float, throttle: float, max_throttle: float,
                                                 constant: float | None) -> None:
    d = decide(angle, throttle, max_throttle, constant)
    cmd = d.command if isinstance(d, Fault) else d
    assert math.isfinite(cmd.angle) and math.isfinite(cmd.throttle)
    assert -1.0 <= cmd.angle <= 1.0
    cap = max_throttle if math.isfinite(max_throttle) else 0.0
    assert abs(cmd.throttle) <= max(0.0, min(1.0, cap))
    assert isinstance(d, Fault) == (output_fault(angle, throttle) is not None)


def test_a_nan_throttle_is_a_fault_even_when_a_constant_throttle_replaces_it() -> None:
    d = decide(0.1, math.nan, 1.0, 0.3)
    assert isinstance(d, Fault) and d.command == NEUTRAL and "throttle=nan" in d.reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_pwm_of_a_non_finite_command_is_centre_and_stopped(bad: float) -> None:
    cal = Calibration()
    assert cal.steering_pwm(bad) == cal.steering_pwm(0.0)
    assert cal.throttle_pwm(bad) == cal.throttle_stopped_pwm


def counter(consecutive: int = 3, in_window: int = 5, window: int = 100) -> FaultCounter:
    return FaultCounter(FaultPolicy(consecutive, in_window, window))


def feed(c: FaultCounter, pattern: list[bool]) -> int | None:
    """Index of the output that tripped the stop, or None."""
    for i, faulty in enumerate(pattern):
        if c.record("model output non-finite: angle=nan" if faulty else None):
            return i
    return None


@pytest.mark.parametrize("consecutive", [1, 2, 3, 4])
def test_consecutive_faults_trip_at_the_policy_count(consecutive: int) -> None:
    c = counter(consecutive=consecutive, in_window=99)
    assert feed(c, [True] * consecutive) == consecutive - 1
    assert c.tripped is not None and f"{consecutive} faulty model outputs in a row" in c.tripped


def test_faults_apart_trip_on_the_window_count() -> None:
    pattern = [i % 5 == 0 for i in range(100)]  # 20% of the outputs, never two in a row
    c = counter()
    assert feed(c, pattern) == 20  # the fifth fault: outputs 0, 5, 10, 15, 20
    assert c.tripped is not None and "5 faulty model outputs in the last 21" in c.tripped


def test_rare_faults_never_trip_and_are_still_counted() -> None:
    pattern = [i % 25 == 0 for i in range(10_000)]  # 4 in every 100: one under the policy
    c = counter()
    assert feed(c, pattern) is None and c.tripped is None
    assert c.total == 400


def test_faults_older_than_the_window_are_forgotten() -> None:
    c = counter(consecutive=9, in_window=3, window=10)
    assert feed(c, [True, True] + [False] * 9 + [True]) is None  # the first two left the window
    assert feed(c, [True]) is None  # two in the window
    assert feed(c, [True]) == 0  # three


def test_a_trip_holds_through_good_outputs_until_reset() -> None:
    c = counter()
    feed(c, [True] * 3)
    reason = c.tripped
    assert feed(c, [False] * 500) is None and c.tripped == reason
    assert c.record("again") is None  # tripped once: later faults do not trip again
    c.reset()
    assert c.tripped is None and c.total == 0 and not c.recent
    assert feed(c, [True, False, True, False]) is None
