"""The drive loop: fixed rate with deadlines, newest frame only, safe stop on every failure.

Each tick: swap in a pending model, check emergency stop, take the newest frame (stale ->
stop), preprocess, infer, decide (edge_pilot.actuation: a non-finite or out-of-range output is
a fault and that tick commands neutral steering and zero throttle; repeated faults trip the
safety stop until another model is swapped in), actuate. Ticks run on a fixed schedule ``t0 + k * period``; a tick
that starts after the next one was due is skipped and counted as late (never queued), so the
loop never drives on old frames to catch up. Any error puts the throttle to stopped, logs the
reason once per change, and holds the stop for ``error_hold_s``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .actuation import NEUTRAL_ANGLE, ZERO_THROTTLE, Command, Fault, FaultCounter, FaultPolicy, decide
from .actuator import Actuator
from .camera import FrameSource
from .estop import EmergencyStop
from .hotswap import ModelSlot
from .logs import fields, get_logger
from .model import preprocess
from .stats import StatsWindow
from .telemetry import TelemetryClient

log = get_logger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    hz: float = 20.0
    stale_after_s: float = 0.25
    error_hold_s: float = 0.5
    max_throttle: float = 1.0
    constant_throttle: float | None = None  # None: use the model's throttle
    stats_interval_s: float = 1.0
    model_report_s: float = 5.0
    frame_wait_s: float = 0.03  # at most this long for a new camera frame instead of repeating one (0: never)
    # Camera and loop at the same rate: move the loop's ticks to just after the camera's frames
    # (frame age ~ phase_target_s instead of anywhere in 0-50 ms), a little per tick.
    phase_lock: bool = False
    phase_target_s: float = 0.002
    phase_step_max_s: float = 0.002
    faults: FaultPolicy = FaultPolicy()


def report_due(report: dict[str, Any], last: dict[str, Any] | None, now: float, last_at: float, every_s: float) -> bool:
    """Pure: send the module.artifacts report? On any change of it, else every ``every_s``."""
    return report != last or now - last_at >= every_s


class DriveLoop:
    def __init__(self, source: FrameSource, actuator: Actuator, slot: ModelSlot, estop: EmergencyStop,
                 telemetry: TelemetryClient | None = None, cfg: LoopConfig = LoopConfig(),
                 clock: Callable[[], float] = time.monotonic, extra_stats: Callable[[], dict[str, Any]] | None = None,
                 sleep: Callable[[float], object] | None = None, wall: Callable[[], float] = time.time):
        self.source, self.actuator, self.slot, self.estop = source, actuator, slot, estop
        self.extra_stats = extra_stats  # e.g. the simulator's pose trail
        self.telemetry, self.cfg, self.clock = telemetry, cfg, clock
        self.period = 1.0 / cfg.hz
        self.phase = 0.0  # seconds the tick schedule was moved to follow the camera (phase_lock)
        self.stopped_reason: str | None = "starting"
        self.reasons: list[str] = []  # every distinct stop reason, in order (also logged)
        self.totals = {"frames": 0, "late": 0, "stale": 0, "errors": 0, "repeats": 0, "ticks": 0, "waited": 0,
                       "faults": 0}
        self.faults = FaultCounter(cfg.faults)  # of the model driving now (`_fault_model`)
        self._fault_model: str | None = None
        self._last_seq = -1
        self._hold_until = 0.0
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # until the next tick (or stop); tests pass a simulated clock's
        self.window = StatsWindow(self.clock())
        self.last_summary: dict[str, Any] = {}
        self._phase_error: float | None = None
        self._last_model_report: dict[str, Any] | None = None
        self._model_reported_at = float("-inf")
        self._reported_for: tuple[object, ...] | None = None  # model_state() when the report was last made
        # the model that last actuated, and the wall-clock time of its first actuated tick (stats:
        # how long a delivered model took to drive)
        self.wall = wall
        self._drove_model: str | None = None
        self.model_drove_at: float | None = None

    # --- safety -------------------------------------------------------------------------------
    def _safe_stop(self, reason: str) -> None:
        try:
            self.actuator.stop()
        except Exception as e:
            log.critical("could not stop throttle (%s) after: %s", e, reason, extra=fields("stop_failed", reason=reason))
        if reason != self.stopped_reason:
            self.stopped_reason = reason
            self.reasons.append(reason)
            log.warning("throttle stopped: %s", reason, extra=fields("throttle_stopped", reason=reason))

    def _neutral_stop(self, reason: str) -> None:
        """Neutral steering and zero throttle (a faulty output must not leave the wheels at full lock)."""
        try:
            self.actuator.drive(NEUTRAL_ANGLE, ZERO_THROTTLE)
        except Exception as e:
            log.critical("could not command neutral (%s) after: %s", e, reason, extra=fields("stop_failed", reason=reason))
        self._safe_stop(reason)

    def _resume(self) -> None:
        if self.stopped_reason is not None:
            log.info("driving (was stopped: %s)", self.stopped_reason, extra=fields("driving"))
            self.stopped_reason = None

    # --- one tick -------------------------------------------------------------------------------
    def tick(self, scheduled: float) -> None:
        now = self.clock()
        self.totals["ticks"] += 1
        model = self.slot.swap_if_pending()
        why = self.estop.active()
        if why:
            self._safe_stop(why)
            return
        if now < self._hold_until:
            self._safe_stop(self.stopped_reason or "error hold")
            return
        t0 = self.clock()
        frame = self.source.latest()
        self._phase_error = None
        if frame is not None and frame.seq == self._last_seq and self.cfg.frame_wait_s > 0:
            # Camera and loop both run at 20 Hz, unsynchronised: rather than drive on the frame
            # already used (a repeat), wait a little for the next one (sources that can).
            wait_newer = getattr(self.source, "wait_newer", None)
            if wait_newer is not None:
                frame = wait_newer(self._last_seq, self.cfg.frame_wait_s) or frame
                self.totals["waited"] += 1
        t_cap = self.clock()
        if frame is None or now - frame.t_capture > self.cfg.stale_after_s:
            self.totals["stale"] += 1
            self.window.stale += 1
            err = getattr(self.source, "error", None)
            detail = f" ({err})" if err else (" (no frame yet)" if frame is None else f" (last frame {now - frame.t_capture:.2f} s old)")
            self._safe_stop(f"stale frame from camera {self.source.name}{detail}")
            return
        if model is None:
            self._safe_stop("no model loaded")
            return
        if model.sha256 != self._fault_model:
            self._fault_model = model.sha256
            self.faults.reset()
        if self.faults.tripped:
            self._neutral_stop(self.faults.tripped)
            return
        if frame.seq == self._last_seq:
            self.totals["repeats"] += 1  # camera slower than the loop: keep the last command
            return
        self._last_seq = frame.seq
        try:
            x = preprocess(frame.image)
            t_pre = self.clock()
        except Exception as e:
            self._tick_error(f"error in drive tick: {type(e).__name__}: {e}")
            return
        try:
            raw_angle, raw_throttle = model.predict(x)
        except Exception as e:  # the model could not give an output: a fault like a NaN
            decision: Command | Fault = Fault(f"model inference failed: {type(e).__name__}: {str(e)[:200]}")
        else:
            decision = decide(raw_angle, raw_throttle, self.cfg.max_throttle, self.cfg.constant_throttle)
        t_inf = self.clock()
        if isinstance(decision, Fault):
            self._fault(model.sha256, decision)
            return
        self.faults.record(None)
        angle, throttle = decision.angle, decision.throttle
        try:
            self.actuator.drive(angle, throttle)
            t_act = self.clock()
        except Exception as e:
            self._tick_error(f"error in drive tick: {type(e).__name__}: {e}")
            return
        if model.sha256 != self._drove_model:
            self._drove_model, self.model_drove_at = model.sha256, self.wall()
        self._resume()
        self.totals["frames"] += 1
        # > 0: the frame waited for the tick; < 0: the tick waited for the frame
        self._phase_error = (t0 - frame.t_capture) - self.cfg.phase_target_s
        stages = {"capture": frame.capture_ms + (t_cap - t0) * 1000.0, "preprocess": (t_pre - t_cap) * 1000.0,
                  "inference": (t_inf - t_pre) * 1000.0, "actuation": (t_act - t_inf) * 1000.0, "total": (t_act - t0) * 1000.0,
                  # how old the frame was when the tick took it, and from the start of its capture
                  # until the command reached the actuator: the car's real reaction time
                  "frame_age": max(0.0, t_cap - frame.t_capture) * 1000.0,
                  "capture_to_actuate": frame.capture_ms + max(0.0, t_act - frame.t_capture) * 1000.0}
        self.window.add(stages, (now - scheduled) * 1000.0, angle, throttle)

    def _tick_error(self, reason: str) -> None:
        self.totals["errors"] += 1
        self.window.errors += 1
        self._hold_until = self.clock() + self.cfg.error_hold_s
        self._safe_stop(reason)

    def _fault(self, sha256: str, fault: Fault) -> None:
        """This tick's output may not drive: neutral and zero throttle now; trip the stop when repeated."""
        self.totals["faults"] += 1
        self.window.faults += 1
        tripped = self.faults.record(fault.reason)
        try:
            self.actuator.drive(fault.command.angle, fault.command.throttle)
        except Exception as e:
            log.critical("could not command neutral (%s) after: %s", e, fault.reason,
                         extra=fields("stop_failed", reason=fault.reason))
            self._safe_stop(fault.reason)
        if tripped:
            log.critical("%s; model %s stays stopped until another model is swapped in", tripped, sha256[:12],
                         extra=fields("safety_stop", reason=tripped, sha256=sha256))
            self._neutral_stop(tripped)
        else:
            self._safe_stop(fault.reason)

    # --- the loop -------------------------------------------------------------------------------
    def _publish(self, now: float) -> None:
        m = self.slot.current
        extra: dict[str, Any] = {"model": m.sha256[:16] if m else None, "stopped": self.stopped_reason, "swaps": self.slot.swaps,
                                 "faults_total": self.totals["faults"], "safety_stop": self.faults.tripped}
        if self._drove_model is not None and self.model_drove_at is not None:
            # the model that drove last and when it first drove (wall clock, seconds since the epoch)
            extra["drove_model"] = self._drove_model[:16]
            extra["drove_model_since"] = round(self.model_drove_at, 3)
        if self.telemetry:
            extra["telemetry_dropped"] = self.telemetry.counters.dropped
        if self.extra_stats:
            extra.update(self.extra_stats())
        self.last_summary = self.window.summary(now, **extra)
        if self.telemetry:
            self.telemetry.publish(self.last_summary)
            self._report_model(now)
        self.window = StatsWindow(now)

    def model_state(self) -> tuple[object, ...]:
        """What the module.artifacts report is made from: when it changes, the report goes at once."""
        return (self.slot.current, self.slot.refused, self.faults.tripped)

    def _report_model(self, now: float) -> None:
        """Tell the agent which model this module drives with, and which it refused (stream
        module.artifacts): on every change and every `model_report_s` otherwise."""
        self._reported_for = self.model_state()
        m, refused = self.slot.current, self.slot.refused
        entries = [refused] if refused else []
        if m is not None and self.faults.tripped and self._fault_model == m.sha256:
            # the safety stop tripped on this model: the car does not drive with it, and says why
            entries = [(m.sha256, self.faults.tripped), *(e for e in entries if e[0] != m.sha256)]
            m = None
        report: dict[str, Any] = {"using": [f"sha256:{m.sha256}"] if m else [],
                                  "refused": [{"digest": f"sha256:{d}", "reason": r[:400]} for d, r in entries]}
        if report_due(report, self._last_model_report, now, self._model_reported_at, self.cfg.model_report_s):
            assert self.telemetry is not None
            if self.telemetry.publish(report, stream="module.artifacts", priority=2):
                self._last_model_report, self._model_reported_at = report, now

    def run(self, duration: float | None = None, until: Callable[[], bool] | None = None) -> dict[str, Any]:
        start = self.clock()
        next_stats = start + self.cfg.stats_interval_s
        k = 0
        try:
            while not self._stop.is_set():
                scheduled = start + k * self.period + self.phase
                now = self.clock()
                if now < scheduled:
                    self._sleep(scheduled - now)
                    now = self.clock()
                behind = int((now - scheduled) / self.period)
                if behind >= 1:  # woke after the next deadline: skip, never queue
                    self.totals["late"] += behind
                    self.window.late += behind
                    k += behind
                    scheduled = start + k * self.period + self.phase
                try:
                    self.tick(scheduled)
                except Exception as e:  # last line of defence
                    self.totals["errors"] += 1
                    self._safe_stop(f"unexpected error: {type(e).__name__}: {e}")
                if self.telemetry is not None and self.model_state() != self._reported_for:
                    # a swap, a refusal or a safety stop is told to the agent now, not with the next
                    # stats window: the deployment waits for it
                    self._report_model(self.clock())
                if self.cfg.phase_lock and self._phase_error is not None:
                    step = self.cfg.phase_step_max_s
                    self.phase -= max(-step, min(step, 0.5 * self._phase_error))
                k += 1
                now = self.clock()
                if now >= next_stats:
                    self._publish(now)
                    next_stats += self.cfg.stats_interval_s
                if duration is not None and now - start >= duration:
                    break
                if until is not None and until():
                    break
        finally:
            self._safe_stop("drive loop ended")
        return dict(self.totals)

    def stop(self) -> None:
        self._stop.set()
