"""Hot-swap while driving: verified models swap between frames; bad models never replace the good one."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from edge_pilot.actuator import SimActuator
from edge_pilot.camera import SimCamera
from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import ModelSlot, ModelWatcher
from edge_pilot.model import META_KEY, ModelError, PilotModel
from edge_pilot.signing import SignatureError, load_public_key, verify_model_bytes
from edge_pilot.sim.world import SimWorld
from onnx import TensorProto, helper

from .conftest import SHIPPED_MODEL, deliver
from .helpers import LoopThread, wait_for


def wrong_shape_model() -> bytes:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])
    a = helper.make_tensor_value_info("angle", TensorProto.FLOAT, [1, 1])
    t = helper.make_tensor_value_info("throttle", TensorProto.FLOAT, [1, 1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "shape"], ["angle"]),
        helper.make_node("Reshape", ["m", "shape"], ["throttle"]),
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 1])
    g = helper.make_graph(nodes, "bad", [x], [a, t], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    e = m.metadata_props.add()
    e.key, e.value = (
        META_KEY,
        '{"input": {"shape": [1, 3, 120, 160], "layout": "NCHW", "color": "RGB", "scale": 0.00392156862745098}}',
    )
    return bytes(m.SerializeToString())


def without_metadata(path: Path) -> bytes:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    return bytes(m.SerializeToString())


def test_signature_checks(signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path) -> None:
    from edge_pilot.signing import sign_model_bytes

    key = load_public_key(public_key_pem)
    data = b"model bytes"
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    assert verify_model_bytes(data, f"{sha}  model.onnx\n", sign_model_bytes(data, signing_key), key) == sha
    with pytest.raises(SignatureError, match="sha256 mismatch"):
        verify_model_bytes(data + b"x", sha, sign_model_bytes(data, signing_key), key)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model_bytes(data, sha, sign_model_bytes(data, other), key)
    with pytest.raises(SignatureError, match="not base64"):
        verify_model_bytes(data, sha, "%%%", key)


def test_hot_swap_while_driving(
    tmp_path: Path, short_model: Path, signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path
) -> None:
    models = tmp_path / "models"
    deliver(models, short_model.read_bytes(), signing_key)
    world = SimWorld()
    src = SimCamera(world, 5)
    src.start()
    act = SimActuator(world)
    act.start_physics()
    slot = ModelSlot(PilotModel.from_file(models / "model.onnx"))
    first = slot.current.sha256  # type: ignore[union-attr]
    key = load_public_key(public_key_pem)
    watcher = ModelWatcher(models, slot, key, poll_s=0.1)
    watcher.last_fingerprint = watcher.fingerprint()
    watcher.start()
    # 5 Hz: a missed tick means the swap held the loop up for a 200 ms period, not that the shared
    # machine was busy (tests/pilot/test_model_switch.py)
    loop = DriveLoop(src, act, slot, EmergencyStop(), None, LoopConfig(hz=5, stale_after_s=0.5))
    try:
        with LoopThread(loop):
            assert wait_for(lambda: loop.totals["frames"] > 5)
            late_before = loop.totals["late"]
            good = SHIPPED_MODEL.read_bytes()
            deliver(models, good, signing_key)
            assert wait_for(lambda: slot.swaps == 1, 30)
            ticks_at_swap = loop.totals["ticks"]
            assert wait_for(lambda: loop.totals["ticks"] > ticks_at_swap + 2)
            swapped_late = loop.totals["late"] - late_before
            good_sha = slot.current.sha256  # type: ignore[union-attr]
            assert good_sha != first
            # now a series of bad deliveries: none may replace the good model
            other = ec.generate_private_key(ec.SECP256R1())
            bad: list[tuple[str, Callable[[], None]]] = [
                ("signed by an untrusted key", lambda: deliver(models, short_model.read_bytes(), other)),
                (
                    "sha256 sidecar mismatch",
                    lambda: deliver(models, short_model.read_bytes(), signing_key, sha="0" * 64),
                ),
                ("truncated file", lambda: deliver(models, good[: len(good) // 2], signing_key)),
                ("wrong input shape", lambda: deliver(models, wrong_shape_model(), signing_key)),
                ("no metadata", lambda: deliver(models, without_metadata(short_model), signing_key)),
                (
                    "bad signature encoding",
                    lambda: deliver(
                        models, short_model.read_bytes(), signing_key, sig=base64.b64encode(b"junk").decode()
                    ),
                ),
            ]
            for i, (name, put) in enumerate(bad, 1):
                time.sleep(0.02)  # distinct mtimes
                put()
                assert wait_for(lambda n=i: len(watcher.refusals) >= n, 30), name  # type: ignore[misc]
            frames_before = loop.totals["frames"]
            assert wait_for(lambda: loop.totals["frames"] > frames_before + 2)  # still driving on the good model
            assert slot.current.sha256 == good_sha and slot.swaps == 1  # type: ignore[union-attr]
            assert loop.stopped_reason is None
    finally:
        watcher.close()
        src.close()
        act.close()
    reasons = [r.reason for r in watcher.refusals]
    assert "does not verify" in reasons[0] and "sha256 mismatch" in reasons[1]
    assert "not a loadable ONNX model" in reasons[2] and "input shape" in reasons[3]
    assert "metadata" in reasons[4] and "does not verify" in reasons[5]
    assert swapped_late == 0, f"hot-swap missed {swapped_late} deadlines"


def test_models_that_fail_their_test_inference_are_refused(short_model: Path) -> None:
    verdict = PilotModel.from_file(short_model).self_test()
    assert verdict.failure is None and verdict.frames == 48
    with pytest.raises(ModelError, match="not a loadable"):
        PilotModel(b"garbage", "x.onnx")
