"""Camera sources: video file, image folder, tub replay, V4L2 errors, newest-frame semantics."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from edge_pilot.camera import CameraError, FnSource, ImageFolderCamera, TubCamera, V4L2Camera, VideoFileCamera
from edge_pilot.sim.record import record_tub


def _wait_frame(src, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        f = src.latest()
        if f is not None:
            return f
        time.sleep(0.01)
    raise AssertionError("no frame")


def test_video_file_frames_become_160x120(tmp_path: Path) -> None:
    p = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 20, (320, 240))
    for i in range(30):
        w.write(np.full((240, 320, 3), i * 8, np.uint8))
    w.release()
    src = VideoFileCamera(p, fps=100)
    src.start()
    f = _wait_frame(src)
    assert f.image.shape == (120, 160, 3)
    assert _wait_until(lambda: src.ended)
    src.close()


def _wait_until(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_image_folder_and_tub_replay(tmp_path: Path) -> None:
    record_tub(tmp_path / "tub", 20, seed=2)
    for src in (TubCamera(tmp_path / "tub", fps=200), ImageFolderCamera(tmp_path / "tub" / "images", fps=200)):
        src.start()
        assert _wait_frame(src).image.shape == (120, 160, 3)
        assert _wait_until(lambda s=src: s.ended)  # type: ignore[misc]
        assert src.latest().seq == 20  # type: ignore[union-attr]
        src.close()


def test_missing_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="/dev/video97"):
        V4L2Camera("/dev/video97").start()
    with pytest.raises(CameraError, match="not found"):
        VideoFileCamera(tmp_path / "none.mp4").start()
    with pytest.raises(CameraError, match=r"manifest\.json"):
        TubCamera(tmp_path).start()


def test_consumer_always_gets_the_newest_frame() -> None:
    counter = {"n": 0}

    def gen() -> np.ndarray:
        counter["n"] += 1
        return np.full((120, 160, 3), counter["n"] % 256, np.uint8)

    src = FnSource(gen, fps=200)
    src.start()
    _wait_frame(src)
    asleep = time.monotonic()
    time.sleep(0.3)  # slow consumer: many frames produced meanwhile
    f = src.latest()
    assert f is not None
    assert f.seq >= counter["n"] - 1  # the newest (or the one being produced right now), no backlog
    assert f.t_capture > asleep  # captured while the consumer slept, not the one it saw last
    src.close()
