"""Module configuration (a JSON or TOML file), validated with pydantic at the boundary."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    kind: Literal["v4l2", "video", "images", "tub", "sim"] = "sim"
    device: str = "/dev/video0"
    path: str | None = None  # video file, image folder or tub
    width: int = Field(160, gt=0)
    height: int = Field(120, gt=0)
    fps: float = Field(20.0, gt=0)
    loop: bool = False


class CalibrationConfig(_Strict):
    bus: int = 1
    address: int = 0x40
    frequency: int = Field(60, ge=24, le=1526)
    steering_channel: int = Field(1, ge=0, le=15)
    throttle_channel: int = Field(0, ge=0, le=15)
    steering_left_pwm: int = Field(460, ge=0, le=4095)
    steering_right_pwm: int = Field(290, ge=0, le=4095)
    throttle_forward_pwm: int = Field(500, ge=0, le=4095)
    throttle_stopped_pwm: int = Field(370, ge=0, le=4095)
    throttle_reverse_pwm: int = Field(220, ge=0, le=4095)


class ActuatorConfig(_Strict):
    kind: Literal["pca9685", "sim"] = "sim"
    calibration: CalibrationConfig = CalibrationConfig()
    # simulator only: simulated seconds per wall-clock second. Below 1 the world slows down, so a
    # machine that infers slowly (arm64 under qemu emulation: ~3 frames/s) still steers often enough.
    sim_time_scale: float = Field(1.0, gt=0, le=1)
    # simulator only: "lock_step" advances the simulated world by sim_step_s per frame the pilot
    # takes (never by the wall clock), so a lap proves steering at any inference speed
    sim_clock: Literal["wall", "lock_step"] = "wall"
    sim_step_s: float = Field(0.05, gt=0, le=0.5)


class LoopSettings(_Strict):
    hz: float = Field(20.0, gt=0, le=200)
    stale_after_s: float = Field(0.25, gt=0)
    error_hold_s: float = Field(0.5, ge=0)
    max_throttle: float = Field(1.0, ge=0, le=1)
    constant_throttle: float | None = Field(None, ge=-1, le=1)
    # wait up to this long for a new camera frame instead of driving on the one already used
    frame_wait_s: float = Field(0.03, ge=0, le=0.2)
    # a faulty model output (non-finite or beyond +-1.25) stops that tick; this many in a row, or
    # fault_trip_in_window among the last fault_window outputs, trip the safety stop
    fault_trip_consecutive: int = Field(3, ge=1, le=1000)
    fault_trip_in_window: int = Field(5, ge=1, le=1000)
    fault_window: int = Field(100, ge=1, le=10000)


class OrtConfig(_Strict):
    intra_threads: int = Field(2, ge=1, le=16)
    inter_threads: int = Field(1, ge=1, le=16)
    spinning: bool = False
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"


class ModelsConfig(_Strict):
    dir: str | None = "/models"
    public_key: str | None = None  # PEM PUBLIC KEY; required unless allow_unsigned
    allow_unsigned: bool = False  # development only
    poll_s: float = Field(1.0, gt=0)
    fallback: str | None = None  # model used at start when the folder has none (e.g. the image's own)
    # a delivered model larger than this is refused before it is read (the shipped one is 3.3 MB);
    # below it, what the module's memory can hold decides (edge_pilot.memory)
    max_model_mb: float = Field(64.0, gt=0, le=4096)
    check_timeout_s: float = Field(120.0, gt=0)  # the separate check process (edge_pilot.model_check)
    # keep the next check process started with its imports done, so a delivered model is checked
    # without waiting for them (about 0.5-1 s on a small CPU); costs that idle process's memory
    standby_check: bool = True


class TelemetryConfig(_Strict):
    stream: str = Field("pilot.stats", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    priority: int = Field(5, ge=0, le=9)
    interval_s: float = Field(1.0, gt=0)
    # Records are held this long, then sent to the agent together, so one durable commit (one
    # fsync) covers them all: SD card wear. A power cut loses up to this many seconds of records
    # not yet acknowledged, as it loses records not yet sent. 0: each record is sent at once.
    flush_s: float = Field(10.0, ge=0, le=300)
    # Records at this priority or more urgent (a lower number), e.g. module.artifacts (2), are
    # sent at once, with everything held.
    send_at_once_priority: int = Field(2, ge=-1, le=9)


class PilotConfig(_Strict):
    source: SourceConfig = SourceConfig()
    actuator: ActuatorConfig = ActuatorConfig()
    loop: LoopSettings = LoopSettings()
    ort: OrtConfig = OrtConfig()
    models: ModelsConfig = ModelsConfig()
    control_dir: str | None = None  # folder watched for the 'estop' file
    telemetry: TelemetryConfig = TelemetryConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _lock_step_needs_the_simulator(self) -> PilotConfig:
        if self.actuator.sim_clock == "lock_step" and (self.source.kind != "sim" or self.actuator.kind != "sim"):
            raise ValueError("actuator.sim_clock lock_step needs source.kind sim and actuator.kind sim")
        return self


class ConfigError(Exception):
    pass


def load_config(path: Path | None) -> PilotConfig:
    if path is None:
        return PilotConfig()
    try:
        raw = Path(path).read_bytes()
        data = tomllib.loads(raw.decode()) if Path(path).suffix == ".toml" else json.loads(raw)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    try:
        return PilotConfig.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {errs}") from e
