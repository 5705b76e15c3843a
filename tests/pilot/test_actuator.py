"""PCA9685 actuator with DonkeyCar calibration (fake I2C bus) and calibration maths."""

from __future__ import annotations

import pytest
from edge_pilot.actuator import ActuatorError, Calibration, PCA9685Actuator, prescale_for
from hypothesis import given
from hypothesis import strategies as st

from .fakes import FakeI2CBus

CAL = Calibration()


def test_donkeycar_endpoints() -> None:
    assert CAL.steering_pwm(-1.0) == 460 and CAL.steering_pwm(1.0) == 290 and CAL.steering_pwm(0.0) == 375
    assert CAL.throttle_pwm(1.0) == 500 and CAL.throttle_pwm(0.0) == 370 and CAL.throttle_pwm(-1.0) == 220
    assert prescale_for(60) == 101  # 25 MHz / (4096 * 60) - 1


@given(st.floats(-5, 5, allow_nan=False), st.floats(-5, 5, allow_nan=False))
def test_pwm_always_within_calibrated_range(a: float, t: float) -> None:
    assert 290 <= CAL.steering_pwm(a) <= 460
    assert 220 <= CAL.throttle_pwm(t) <= 500


@given(st.floats(-1, 1), st.floats(-1, 1))
def test_pwm_monotone(a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    assert CAL.steering_pwm(lo) >= CAL.steering_pwm(hi)  # right has fewer counts
    assert CAL.throttle_pwm(lo) <= CAL.throttle_pwm(hi)


def test_init_sets_60hz_and_stops_throttle() -> None:
    bus = FakeI2CBus()
    act = PCA9685Actuator(CAL, bus)
    assert bus.regs[0xFE] == 101
    assert bus.channel_off(CAL.throttle_channel) == 370
    act.drive(-1.0, 0.5)
    assert bus.channel_off(CAL.steering_channel) == 460
    assert bus.channel_off(CAL.throttle_channel) == 435
    act.close()
    assert bus.closed and bus.channel_off(CAL.throttle_channel) == 370


def test_write_error_is_an_actuator_error_naming_the_channel() -> None:
    bus = FakeI2CBus(fail_register=0x06 + 4 * CAL.steering_channel)
    act = PCA9685Actuator(CAL, bus)
    with pytest.raises(ActuatorError, match="channel 1"):
        act.drive(0.2, 0.5)
    act.stop()
    assert bus.channel_off(CAL.throttle_channel) == 370


def test_missing_i2c_bus_is_a_clear_error() -> None:
    with pytest.raises(ActuatorError, match="/dev/i2c-97"):
        PCA9685Actuator(Calibration(bus=97))
