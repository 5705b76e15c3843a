"""Fast tests of the quickstart's own parts: process clean-up across runs and the pictures.
(The whole story runs for real in tests/system/test_quickstart.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from quickstart import pictures
from quickstart.procs import Processes, clean_stale


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_processes_stop_the_whole_group(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    # a parent that starts a child and keeps running: both are in the started process group
    started = procs.start("tree", [sys.executable, "-c",
                                   "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"])
    def group() -> list[str]:
        return subprocess.run(["pgrep", "-g", str(started.popen.pid)], capture_output=True, text=True).stdout.split()

    deadline = time.monotonic() + 60
    while len(group()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = group()
    assert len(children) == 2
    assert (tmp_path / "pids" / "tree.pid").exists()
    t0 = time.monotonic()
    procs.stop_all()
    assert time.monotonic() - t0 < 30  # stopped, not waited out: both sleep 60 s
    assert not any(_alive(int(pid)) for pid in children)
    assert not (tmp_path / "pids" / "tree.pid").exists()


def test_clean_stale_kills_recorded_leftovers_only(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    leftover = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (pid_dir / "leftover.pid").write_text(f"{leftover.pid}\n/usr/bin/sleep\n")
        # a pid that was reused by another program: never killed
        (pid_dir / "reused.pid").write_text(f"{other.pid}\n/usr/sbin/mosquitto\n")
        (pid_dir / "gone.pid").write_text("999999999\n/usr/bin/swtpm\n")
        stopped = clean_stale(pid_dir)
        assert stopped == [f"leftover (pid {leftover.pid})"]
        assert leftover.wait(5) is not None
        assert other.poll() is None
        assert list(pid_dir.glob("*.pid")) == []
    finally:
        for p in (leftover, other):
            p.kill()
            p.wait()


def test_pictures_show_the_data(tmp_path: Path) -> None:
    from edge_pilot.sim.track import Track

    track = Track.default()
    path = [(float(x), float(y)) for x, y in track.points[::20]]
    pictures.track_picture(path, tmp_path / "track.png", "test")
    rng = np.random.default_rng(0)
    figures = pictures.latency_picture(list(rng.normal(5.0, 0.5, 1000)), tmp_path / "latency.png")
    assert 4.8 < figures["p50_ms"] < 5.2 and figures["p99_ms"] > figures["p50_ms"] and figures["frames"] == 1000
    pictures.queue_picture([(float(t), max(0, t - 10) if t < 20 else 0) for t in range(30)], (10.0, 20.0),
                           tmp_path / "queue.png")
    for name in ("track.png", "latency.png", "queue.png"):
        img = cv2.imread(str(tmp_path / name))
        assert img is not None and img.shape == (600, 900, 3)
    # the path (blue to red) covers the road all around: coloured pixels in every quadrant
    img = cv2.imread(str(tmp_path / "track.png"))
    coloured = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[:, :, 1] > 80  # the road and axes are grey
    h, w = coloured.shape
    for quadrant in (coloured[: h // 2, : w // 2], coloured[: h // 2, w // 2:], coloured[h // 2:, : w // 2],
                     coloured[h // 2:, w // 2:]):
        assert quadrant.sum() > 50


def test_empty_inputs_still_make_a_labelled_picture(tmp_path: Path) -> None:
    assert pictures.latency_picture([], tmp_path / "latency.png") == {"frames": 0}
    pictures.queue_picture([], None, tmp_path / "queue.png")
    assert cv2.imread(str(tmp_path / "latency.png")) is not None


def test_a_work_folder_the_story_did_not_make_is_refused_and_left_whole(tmp_path: Path) -> None:
    """The story empties its work folder at each start: a mistyped --work must not empty another."""
    from quickstart.story import WORK_MARKER, Options, Story, StoryError

    work = tmp_path / "documents"
    work.mkdir()
    (work / "thesis.txt").write_text("precious")
    story = Story(Options(work=work, out=tmp_path / "out", interactive=False))
    with pytest.raises(StoryError, match=f"work folder {work} is not empty and was not made by the quickstart"):
        story.prepare()
    assert (work / "thesis.txt").read_text() == "precious" and story.procs is None
    assert not (work / WORK_MARKER).exists()
    # (a folder the story made, with the marker, is emptied and reused: tests/system/test_quickstart.py)
