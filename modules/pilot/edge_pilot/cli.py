"""``edge-pilot`` command line: drive, eval, record, sign, keygen."""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .actuation import FaultPolicy
from .actuator import Actuator, Calibration, PCA9685Actuator, SimActuator
from .camera import CameraError, FrameSource, ImageFolderCamera, SimCamera, TubCamera, V4L2Camera, VideoFileCamera
from .config import ConfigError, PilotConfig, load_config
from .drive import DriveLoop, LoopConfig
from .estop import EmergencyStop
from .hotswap import MODEL_FILE, CheckSettings, ModelSlot, ModelWatcher, check_and_load, model_digest
from .logs import fields, get_logger, setup_logging
from .model import ModelError, OrtOptions, PilotModel
from .signing import SignatureError, load_public_key
from .sim.lockstep import LockStepSim
from .sim.world import SimWorld
from .telemetry import TelemetryClient

log = get_logger("edge_pilot")


def make_source(cfg: PilotConfig, world: SimWorld | None) -> FrameSource:
    s = cfg.source
    if s.kind == "sim":
        assert world is not None
        return SimCamera(world, s.fps)
    if s.kind == "v4l2":
        return V4L2Camera(s.device, s.width, s.height, int(s.fps))
    if s.path is None:
        raise ConfigError(f"source.path is required for source.kind={s.kind}")
    if s.kind == "video":
        return VideoFileCamera(Path(s.path), s.fps, s.loop)
    if s.kind == "images":
        return ImageFolderCamera(Path(s.path), s.fps, s.loop)
    return TubCamera(Path(s.path), s.fps, s.loop)


def make_actuator(cfg: PilotConfig, world: SimWorld | None) -> Actuator:
    if cfg.actuator.kind == "sim":
        act = SimActuator(world, time_scale=cfg.actuator.sim_time_scale)
        act.start_physics()
        return act
    return PCA9685Actuator(Calibration(**cfg.actuator.calibration.model_dump()))


def check_settings(cfg: PilotConfig) -> CheckSettings:
    return CheckSettings(max_model_bytes=int(cfg.models.max_model_mb * 1024 * 1024), timeout_s=cfg.models.check_timeout_s,
                         standby=cfg.models.standby_check)


def initial_model(cfg: PilotConfig, opts: OrtOptions, key: Any,
                  refused: list[tuple[str, str]] | None = None) -> PilotModel | None:
    """The folder's model if it verifies, else the fallback; a refused folder model is appended to
    `refused` as (sha256 hex, reason), for the report to the agent."""
    m = cfg.models
    if m.dir and (Path(m.dir) / MODEL_FILE).exists() and (key is not None or m.allow_unsigned):
        try:
            return check_and_load(Path(m.dir), key, opts, replace(check_settings(cfg), nice=0))  # nothing drives yet
        except ModelError as e:
            log.error("model in %s refused: %s", m.dir, e, extra=fields("model_refused", reason=str(e)))
            if refused is not None:
                try:
                    refused.append((model_digest(Path(m.dir), check_settings(cfg).max_model_bytes), str(e)))
                except OSError:
                    pass
    if m.fallback:
        try:
            model = PilotModel.from_file(Path(m.fallback), opts)
            model.self_test()
            return model
        except ModelError as e:
            log.error("fallback model refused: %s", e, extra=fields("model_refused", reason=str(e)))
    log.error("no usable model: throttle stays stopped until one is delivered", extra=fields("no_model"))
    return None


def cmd_drive(a: argparse.Namespace) -> int:
    cfg = load_config(a.config)
    upd: dict[str, Any] = {}
    if a.source:
        upd["source"] = cfg.source.model_copy(update={"kind": a.source, **({"path": a.source_path} if a.source_path else {}),
                                                       **({"device": a.device} if a.device else {})})
    if a.models is not None or a.public_key or a.allow_unsigned or a.fallback_model:
        mu: dict[str, Any] = {}
        if a.models is not None:
            mu["dir"] = a.models or None
        if a.public_key:
            mu["public_key"] = a.public_key
        if a.allow_unsigned:
            mu["allow_unsigned"] = True
        if a.fallback_model:
            mu["fallback"] = a.fallback_model
        upd["models"] = cfg.models.model_copy(update=mu)
    if a.actuator:
        upd["actuator"] = cfg.actuator.model_copy(update={"kind": a.actuator})
    if a.control_dir:
        upd["control_dir"] = a.control_dir
    cfg = cfg.model_copy(update=upd)
    setup_logging(cfg.log_level)
    opts = OrtOptions(**cfg.ort.model_dump())
    key = None
    if cfg.models.public_key:
        try:
            key = load_public_key(Path(cfg.models.public_key))
        except SignatureError as e:
            log.error("trusted key unusable, delivered models will be refused: %s", e, extra=fields("no_trusted_key", reason=str(e)))
    elif not cfg.models.allow_unsigned:
        log.warning("no models.public_key: delivered models will be refused", extra=fields("no_trusted_key"))
    world = SimWorld(seed=a.seed) if cfg.source.kind == "sim" or cfg.actuator.kind == "sim" else None
    estop = EmergencyStop(Path(cfg.control_dir) if cfg.control_dir else None)
    estop.install_signals()
    lock_step = LockStepSim(world, cfg.actuator.sim_step_s) if world is not None and cfg.actuator.sim_clock == "lock_step" else None
    actuator: Actuator = lock_step if lock_step is not None else make_actuator(cfg, world)
    refused: list[tuple[str, str]] = []
    slot = ModelSlot(initial_model(cfg, opts, key, refused))
    slot.refused = refused[-1] if refused else None
    source: FrameSource = lock_step if lock_step is not None else make_source(cfg, world)
    try:
        source.start()
    except CameraError as e:
        log.error("camera unavailable: %s", e, extra=fields("camera_unavailable", reason=str(e)))
    telemetry = TelemetryClient(stream=cfg.telemetry.stream, priority=cfg.telemetry.priority,
                                flush_s=cfg.telemetry.flush_s, send_at_once_priority=cfg.telemetry.send_at_once_priority)
    watcher = None
    if cfg.models.dir and (key is not None or cfg.models.allow_unsigned):
        watcher = ModelWatcher(Path(cfg.models.dir), slot, key, opts, cfg.models.poll_s, check_settings(cfg))
        # the folder as checked at start (driving, or refused): checked again only when it changes
        watcher.last_fingerprint = watcher.fingerprint() if slot.current is not None or refused else None
        watcher.start()
    lc = LoopConfig(cfg.loop.hz, cfg.loop.stale_after_s, cfg.loop.error_hold_s, cfg.loop.max_throttle, cfg.loop.constant_throttle,
                    cfg.telemetry.interval_s, frame_wait_s=cfg.loop.frame_wait_s,
                    # a camera at the loop's rate: tick right after its frames (not for replayed files)
                    phase_lock=lock_step is None and cfg.source.kind in ("v4l2", "sim") and cfg.source.fps == cfg.loop.hz,
                    faults=FaultPolicy(cfg.loop.fault_trip_consecutive, cfg.loop.fault_trip_in_window, cfg.loop.fault_window))
    sim_stats = (lambda: {"sim": world.telemetry()}) if world is not None and cfg.source.kind == "sim" else None
    loop = DriveLoop(source, actuator, slot, estop, telemetry, lc, extra_stats=sim_stats)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    until = None
    if a.laps and world is not None:
        w = world
        until = lambda: w.laps >= a.laps or abs(w.cross_track()) > w.track.width  # noqa: E731
    log.info("driving at %.0f Hz from %s", lc.hz, source.name, extra=fields("start"))
    try:
        totals = loop.run(duration=a.duration, until=until)
    finally:
        if watcher:
            watcher.close()
        source.close()
        actuator.close()
        telemetry.close()
    out: dict[str, Any] = {"totals": totals, "stop_reasons": loop.reasons, "safety_stop": loop.faults.tripped, "swaps": slot.swaps,
                           "model": slot.current.sha256 if slot.current else None, "last_stats": loop.last_summary,
                           "telemetry": vars(telemetry.counters),
                           "final_throttle": getattr(actuator, "throttle", None),
                           "final_throttle_pwm": getattr(actuator, "last_throttle_pwm", None)}
    if world is not None:
        st = world.stats
        out["sim"] = {"laps": round(world.laps, 3), "mean_abs_cte_m": round(st.mean_abs_cte, 4),
                      "max_abs_cte_m": round(st.max_abs_cte, 4), "off_road_steps": st.off_road,
                      "clock": cfg.actuator.sim_clock}
        if lock_step is not None:
            out["sim"]["simulated_s"] = round(lock_step.frames * lock_step.step_s, 3)
    print(json.dumps(out), flush=True)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .closed_loop import drive_laps, heldout_mae

    model = PilotModel.from_file(Path(a.model))
    res: dict[str, Any] = {"model": model.sha256, "heldout": heldout_mae(model, a.heldout_frames)}
    for d in (1, -1) if a.both_directions else (1,):
        res[f"closed_loop_dir{d:+d}"] = drive_laps(model, a.laps, direction=d).as_dict()
    print(json.dumps(res, indent=2))
    return 0


def cmd_record(a: argparse.Namespace) -> int:
    from .sim.record import record_tub

    n = record_tub(Path(a.out), a.frames, a.seed)
    print(json.dumps({"tub": a.out, "frames": n}))
    return 0


def cmd_reference(a: argparse.Namespace) -> int:
    from .reference import record

    print(json.dumps({"tub": a.out, "hash": record(Path(a.out))}))
    return 0


def cmd_sign(a: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from .signing import sign_model_bytes

    key = serialization.load_pem_private_key(Path(a.key).read_bytes(), password=None)
    data = Path(a.file).read_bytes()
    Path(a.file + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    Path(a.file + ".sig").write_text(sign_model_bytes(data, key) + "\n")  # type: ignore[arg-type]
    return 0


def cmd_keygen(a: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (out / "pilot.key").write_bytes(pem)
    (out / "pilot.key").chmod(0o600)
    pub = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (out / "pilot.pub").write_bytes(pub)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-pilot")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive", help="run the drive loop")
    d.add_argument("--config", type=Path)
    d.add_argument("--source", choices=["v4l2", "video", "images", "tub", "sim"])
    d.add_argument("--source-path")
    d.add_argument("--device")
    d.add_argument("--actuator", choices=["pca9685", "sim"])
    d.add_argument("--models", help="models folder ('' to disable)")
    d.add_argument("--public-key")
    d.add_argument("--allow-unsigned", action="store_true")
    d.add_argument("--fallback-model")
    d.add_argument("--control-dir")
    d.add_argument("--duration", type=float)
    d.add_argument("--laps", type=float, help="sim only: stop after this many laps")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_drive)
    e = sub.add_parser("eval", help="held-out accuracy and closed-loop laps in the simulator")
    e.add_argument("--model", required=True)
    e.add_argument("--laps", type=float, default=3.0)
    e.add_argument("--heldout-frames", type=int, default=1000)
    e.add_argument("--both-directions", action="store_true")
    e.set_defaults(fn=cmd_eval)
    r = sub.add_parser("record", help="record expert driving as a tub v2")
    r.add_argument("--out", required=True)
    r.add_argument("--frames", type=int, default=2000)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=cmd_record)
    rf = sub.add_parser("reference", help="record the reference frames every model is self-tested on (a tub v2)")
    rf.add_argument("--out", required=True)
    rf.set_defaults(fn=cmd_reference)
    s = sub.add_parser("sign", help="write FILE.sha256 and FILE.sig (cosign sign-blob format)")
    s.add_argument("--key", required=True)
    s.add_argument("file")
    s.set_defaults(fn=cmd_sign)
    k = sub.add_parser("keygen", help="ECDSA P-256 key pair for model signing (development)")
    k.add_argument("--out-dir", required=True)
    k.set_defaults(fn=cmd_keygen)
    a = ap.parse_args(argv)
    try:
        return int(a.fn(a))
    except (ConfigError, SignatureError, ModelError) as err:
        print(f"edge-pilot: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
