"""Camera sources behind one interface, each delivering only the newest frame.

A capture thread reads as fast as the source delivers and keeps just the latest frame, so the
drive loop never consumes a buffered, old frame (for V4L2 the driver queue is also set to one
buffer). Frames are resized to 160x120x3 BGR uint8 at capture."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from . import FRAME_HEIGHT, FRAME_WIDTH
from .logs import fields, get_logger
from .sim.world import SimWorld
from .tub import read_tub

log = get_logger(__name__)


class CameraError(Exception):
    pass


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (120, 160, 3) BGR uint8
    seq: int
    t_capture: float  # time.monotonic() when captured
    capture_ms: float = 0.0  # time spent grabbing + converting this frame


class FrameSource(Protocol):
    name: str

    def start(self) -> None: ...
    def latest(self) -> Frame | None: ...
    def close(self) -> None: ...


def fit(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[:2] != (FRAME_HEIGHT, FRAME_WIDTH):
        image = cv2.resize(image, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)
    return image


class ThreadedSource:
    """Runs ``grab()`` in a thread; keeps the newest frame. ``grab`` returns None at end of data."""

    name = "source"

    def __init__(self, fps: float | None = None):
        self.fps = fps
        self._latest: Frame | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.ended = False

    def open(self) -> None:
        """Open the device/file; raise CameraError with a clear reason."""

    def grab(self) -> np.ndarray | None:
        raise NotImplementedError

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.fps if self.fps else 0.0
        nxt = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                img = self.grab()
            except Exception as e:  # a capture failure must not kill the process; the loop sees stale frames
                self.error = f"{type(e).__name__}: {e}"
                log.error("camera %s failed: %s", self.name, self.error, extra=fields("camera_error", reason=self.error))
                return
            if img is None:
                self.ended = True
                log.warning("camera %s: no more frames", self.name, extra=fields("camera_ended"))
                return
            img = fit(img)
            t1 = time.monotonic()
            with self._lock:
                self._seq += 1
                self._latest = Frame(img, self._seq, t1, (t1 - t0) * 1000.0)
                self._new_frame.notify_all()
            if period:
                nxt += period
                delay = nxt - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    nxt = time.monotonic()

    def latest(self) -> Frame | None:
        with self._lock:
            return self._latest

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """The newest frame once it is newer than `seq`, waiting at most `timeout` seconds."""
        with self._new_frame:
            self._new_frame.wait_for(lambda: self._latest is not None and self._latest.seq > seq, timeout)
            frame = self._latest
        return frame if frame is not None and frame.seq > seq else None

    def close(self) -> None:
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self.release()

    def release(self) -> None:
        pass


class V4L2Camera(ThreadedSource):
    """A V4L2 device through OpenCV; reads continuously so the newest frame is always at hand."""

    def __init__(self, device: str = "/dev/video0", width: int = 160, height: int = 120, fps: int = 20):
        super().__init__(None)  # paced by the device itself
        self.device, self.width, self.height, self.cam_fps = device, width, height, fps
        self.name = device
        self.cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if not Path(self.device).exists():
            raise CameraError(f"{self.device}: camera device not present")
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise CameraError(f"{self.device}: cannot open camera (permissions? group video)")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.cam_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.cap = cap

    def grab(self) -> np.ndarray | None:
        assert self.cap is not None
        ok, img = self.cap.read()
        if not ok:
            raise CameraError(f"{self.device}: read failed (unplugged?)")
        return np.asarray(img)

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()


class VideoFileCamera(ThreadedSource):
    def __init__(self, path: Path, fps: float | None = None, loop: bool = False):
        super().__init__(fps)
        self.path, self.loop = Path(path), loop
        self.name = str(path)
        self.cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if not self.path.is_file():
            raise CameraError(f"{self.path}: video file not found")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise CameraError(f"{self.path}: cannot decode video")
        if not self.fps:
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 20.0
        self.cap = cap

    def grab(self) -> np.ndarray | None:
        assert self.cap is not None
        ok, img = self.cap.read()
        if not ok and self.loop:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self.cap.read()
        return np.asarray(img) if ok else None

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()


class _ReplaySource(ThreadedSource):
    def __init__(self, fps: float, loop: bool):
        super().__init__(fps)
        self.loop = loop
        self._it: Iterator[np.ndarray] | None = None

    def items(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def grab(self) -> np.ndarray | None:
        if self._it is None:
            self._it = self.items()
        nxt = next(self._it, None)
        if nxt is None and self.loop:
            self._it = self.items()
            nxt = next(self._it, None)
        return nxt


class ImageFolderCamera(_ReplaySource):
    def __init__(self, folder: Path, fps: float = 20.0, loop: bool = False):
        super().__init__(fps, loop)
        self.folder = Path(folder)
        self.name = str(folder)

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(f"{self.folder}: image folder not found")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not self.files:
            raise CameraError(f"{self.folder}: no .jpg/.png images")

    def items(self) -> Iterator[np.ndarray]:
        for p in self.files:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise CameraError(f"{p}: unreadable image")
            yield img


class TubCamera(_ReplaySource):
    def __init__(self, tub: Path, fps: float = 20.0, loop: bool = False):
        super().__init__(fps, loop)
        self.tub = Path(tub)
        self.name = f"tub:{tub}"

    def open(self) -> None:
        if not (self.tub / "manifest.json").is_file():
            raise CameraError(f"{self.tub}: not a tub v2 (manifest.json missing)")

    def items(self) -> Iterator[np.ndarray]:
        for rec in read_tub(self.tub):
            yield rec.image()


class SimCamera(ThreadedSource):
    """Renders the simulator's current car pose at ``fps`` (the car is moved by the SimActuator)."""

    def __init__(self, world: SimWorld, fps: float = 20.0):
        super().__init__(fps)
        self.world = world
        self.name = "sim"

    def grab(self) -> np.ndarray | None:
        return self.world.render()


class FnSource(ThreadedSource):
    """A source from a callable (tests, benches)."""

    def __init__(self, fn: Callable[[], np.ndarray | None], fps: float = 20.0, name: str = "fn"):
        super().__init__(fps)
        self.fn = fn
        self.name = name

    def grab(self) -> np.ndarray | None:
        return self.fn()
