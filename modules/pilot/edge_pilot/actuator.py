"""Actuators: a PCA9685 PWM board over I2C (DonkeyCar calibration) and a simulated one.

The PCA9685 driver is written by hand on smbus2 because the usual libraries (Adafruit
CircuitPython + Blinka) drag in a board-detection stack; the chip needs five registers."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from .sim.world import SimWorld


class ActuatorError(Exception):
    pass


class Actuator(Protocol):
    def drive(self, angle: float, throttle: float) -> None: ...
    def stop(self) -> None:
        """Throttle to stopped (steering unchanged). Must be safe to call at any time."""
        ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Calibration:
    """DonkeyCar-compatible PWM counts (12-bit, at ``frequency`` Hz)."""

    steering_channel: int = 1
    throttle_channel: int = 0
    steering_left_pwm: int = 460
    steering_right_pwm: int = 290
    throttle_forward_pwm: int = 500
    throttle_stopped_pwm: int = 370
    throttle_reverse_pwm: int = 220
    frequency: int = 60
    address: int = 0x40
    bus: int = 1

    def steering_pwm(self, angle: float) -> int:
        """Non-finite: centre (never clamp a NaN: max(-1, min(1, nan)) is full lock)."""
        a = max(-1.0, min(1.0, angle)) if math.isfinite(angle) else 0.0
        return round(self.steering_left_pwm + (a + 1.0) / 2.0 * (self.steering_right_pwm - self.steering_left_pwm))

    def throttle_pwm(self, throttle: float) -> int:
        """Non-finite: stopped."""
        t = max(-1.0, min(1.0, throttle)) if math.isfinite(throttle) else 0.0
        if t >= 0:
            return round(self.throttle_stopped_pwm + t * (self.throttle_forward_pwm - self.throttle_stopped_pwm))
        return round(self.throttle_stopped_pwm + t * (self.throttle_stopped_pwm - self.throttle_reverse_pwm))


class I2CBus(Protocol):
    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...
    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...
    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...
    def close(self) -> None: ...


MODE1, MODE2, PRESCALE, LED0_ON_L = 0x00, 0x01, 0xFE, 0x06
SLEEP, AUTO_INCREMENT, RESTART, OUTDRV = 0x10, 0x20, 0x80, 0x04
OSC_HZ = 25_000_000


def prescale_for(frequency: int) -> int:
    return max(3, min(255, round(OSC_HZ / (4096 * frequency)) - 1))


class PCA9685Actuator:
    def __init__(self, cal: Calibration, bus: I2CBus | None = None):
        self.cal = cal
        if bus is None:
            from smbus2 import SMBus

            try:
                bus = SMBus(cal.bus)
            except OSError as e:
                raise ActuatorError(f"/dev/i2c-{cal.bus}: cannot open I2C bus ({e.strerror})") from e
        self.bus = bus
        self.last_throttle_pwm: int | None = None
        try:
            a = cal.address
            bus.write_byte_data(a, MODE1, SLEEP | AUTO_INCREMENT)  # sleep to change the prescaler
            bus.write_byte_data(a, PRESCALE, prescale_for(cal.frequency))
            bus.write_byte_data(a, MODE2, OUTDRV)
            bus.write_byte_data(a, MODE1, AUTO_INCREMENT)
            time.sleep(0.0005)  # oscillator start-up
            bus.write_byte_data(a, MODE1, AUTO_INCREMENT | RESTART)
        except OSError as e:
            raise ActuatorError(f"PCA9685 at 0x{cal.address:02x} on bus {cal.bus}: init failed ({e.strerror or e})") from e
        self.stop()

    def _set_pwm(self, channel: int, off: int) -> None:
        reg = LED0_ON_L + 4 * channel
        try:
            self.bus.write_i2c_block_data(self.cal.address, reg, [0, 0, off & 0xFF, (off >> 8) & 0x0F])
        except OSError as e:
            raise ActuatorError(f"PCA9685 channel {channel}: write failed ({e.strerror or e})") from e

    def drive(self, angle: float, throttle: float) -> None:
        self._set_pwm(self.cal.steering_channel, self.cal.steering_pwm(angle))
        pwm = self.cal.throttle_pwm(throttle)
        self._set_pwm(self.cal.throttle_channel, pwm)
        self.last_throttle_pwm = pwm
        check_finite(angle, throttle)  # after commanding centre and stopped: the caller learns of its bug

    def stop(self) -> None:
        self._set_pwm(self.cal.throttle_channel, self.cal.throttle_stopped_pwm)
        self.last_throttle_pwm = self.cal.throttle_stopped_pwm

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.bus.close()


def check_finite(angle: float, throttle: float) -> None:
    if not (math.isfinite(angle) and math.isfinite(throttle)):
        raise ActuatorError(f"non-finite command angle={angle!r} throttle={throttle!r}: centred and stopped instead")


class SimActuator:
    """Feeds commands to the simulator; in real time a background thread integrates the car."""

    def __init__(self, world: SimWorld | None = None, physics_hz: float = 100.0, time_scale: float = 1.0):
        self.world = world
        self.angle = 0.0
        self.throttle = 0.0
        self.history: list[tuple[float, float, float]] = []  # (monotonic, angle, throttle)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dt = 1.0 / physics_hz
        self._sim_dt = self._dt * time_scale  # simulated time per physics step

    def drive(self, angle: float, throttle: float) -> None:
        finite = math.isfinite(angle) and math.isfinite(throttle)
        with self._lock:
            self.angle, self.throttle = (float(angle), float(throttle)) if finite else (0.0, 0.0)
            self.history.append((time.monotonic(), self.angle, self.throttle))
            del self.history[:-2000]
        check_finite(angle, throttle)

    def stop(self) -> None:
        with self._lock:
            self.throttle = 0.0
            self.history.append((time.monotonic(), self.angle, 0.0))

    def start_physics(self) -> None:
        if self.world is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._physics, name="sim-physics", daemon=True)
        self._thread.start()

    def _physics(self) -> None:
        assert self.world is not None
        nxt = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                a, t = self.angle, self.throttle
            self.world.step(a, t, self._sim_dt)
            nxt += self._dt
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def close(self) -> None:
        self.stop()
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)
