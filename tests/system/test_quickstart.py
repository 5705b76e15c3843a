"""The README's first command, `scripts/run`: the whole quickstart story, non-interactively.

- a run after a run that was killed with SIGKILL mid-story (leftover broker, registry, TPM, agent,
  pilot...) cleans up after it and completes the whole story: figures.json says what happened,
  the three pictures are real PNGs with content, and nothing it started is left running;
- Ctrl-C (SIGINT to the process group, as a terminal sends it) in the middle of the story stops
  everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from devinfra.procs import wait_until

REPO = Path(__file__).resolve().parents[2]
# The test's own work folder and container label: the checkout's .quickstart and a developer's
# quickstart running on the same machine are left alone. A short path: the podman service's socket
# lives in it.
RUN_ID = uuid.uuid4().hex[:8]
WORK = Path(tempfile.gettempdir()) / f"qs-test-{RUN_ID}" / "run"  # made by the story itself
QS_LABEL = f"qs-test-{RUN_ID}"


@pytest.fixture(scope="module", autouse=True)
def _remove_work_folder() -> Iterator[None]:
    yield
    shutil.rmtree(WORK.parent, ignore_errors=True)


def _start(out: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(REPO / "scripts" / "run"), "--non-interactive", "--drive", "8", "--outage", "8",
             "--work", str(WORK), "--out", str(out), *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "EDGE_QUICKSTART_LABEL": QS_LABEL},
        )


def _running_from_work_dir() -> list[str]:
    """Processes whose command line names the quickstart's work folder (everything it starts does)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        text = raw.replace(b"\0", b" ").decode(errors="replace")
        if str(WORK) in text and state != "Z":
            found.append(f"{cmdline.parent.name}: {text[:200]}")
    return found


def _containers() -> list[str]:
    out = subprocess.run(["podman", "ps", "-a", "--filter", f"label={QS_LABEL}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def _assert_nothing_left() -> None:
    wait_until(lambda: not _running_from_work_dir(), 20, f"quickstart processes to stop: {_running_from_work_dir()}")
    assert _containers() == []
    assert not list((WORK / "pids").glob("*.pid")), "pid files of stopped processes remain"


def _picture(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (600, 900, 3), path
    # a drawn chart, not a blank canvas: several colours and many non-white pixels
    assert (img < 250).any(axis=2).mean() > 0.02, f"{path} is almost empty"
    return img


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def test_story_completes_after_a_killed_run(tmp_path: Path) -> None:
    # 1. a run killed mid-story (kill -9 of the story only): its helpers stay behind
    killed_log = tmp_path / "killed.log"
    proc = _start(tmp_path / "out-killed", killed_log)
    try:
        wait_until(lambda: "[5/9]" in killed_log.read_text(errors="replace"), 900,
                   "the first run to reach step 5\n" + killed_log.read_text(errors="replace")[-3000:])
        os.kill(proc.pid, signal.SIGKILL)  # the python process only, as if it crashed
        proc.wait(10)
        assert _running_from_work_dir(), "expected leftovers from the killed run"
    except BaseException:
        _kill_group(proc, signal.SIGKILL)
        raise

    # 2. the next run cleans up after it and tells the whole story
    out = tmp_path / "out"
    log_path = tmp_path / "run.log"
    proc = _start(out, log_path)
    try:
        proc.wait(900)
    finally:
        _kill_group(proc, signal.SIGKILL)
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 0, output[-6000:]
    assert "cleaned up after a previous run" in output, output[:2000]
    for n in range(1, 10):
        assert f"[{n}/9] done" in output, output[-4000:]

    figures = json.loads((out / "figures.json").read_text())
    pilot = figures["pilot"]
    assert pilot["stats_records"] >= 10 and pilot["laps"] > 0.3 and pilot["fps_mean"] > 10, pilot
    assert pilot["latency_ms"]["frames"] > 100 and 0 < pilot["latency_ms"]["p50_ms"] <= pilot["latency_ms"]["p99_ms"]
    assert pilot["path_points"] > 50 and pilot["mean_abs_cte_m"] < 0.4, pilot
    outage = figures["outage"]
    assert outage["seconds"] >= 8 and outage["queue_peak"] > 0, outage
    assert outage["records_made_while_offline_and_uploaded"] > 0 and outage["missing_sequence_numbers"] == 0, outage
    assert outage["laps_driven_while_offline"] > 0.1, outage  # the car kept driving
    refusals = figures["refusals"]
    assert refusals["tampered_image_fleet_check"]["exit"] != 0
    assert "unsigned" in refusals["tampered_image_fleet_check"]["output"]
    assert refusals["replayed_deployment"]["code"] == "replayed"
    assert figures["pilot_mode"].startswith("container")
    assert refusals["tampered_image_device"] and refusals["pilot_still_running"] is True, refusals
    # A new signed model reached the driving pilot without a container restart, and a model signed
    # by a wrong key was refused while it kept driving with the new one.
    model = figures["model_update"]
    assert model["new_layer"] != model["first_layer"] and model["container_unchanged"] is True, model
    assert "artifact_untrusted_key" in model["wrong_key_refusal"] and model["still_on_new_model"] is True, model
    assert model["marked_on_track"] is True, model  # the switch is marked on track.png
    assert figures["attestation"]["first_attest_ok"] is True
    # The TPM quote's image log shows exactly the signed pilot image running (PCR 23).
    assert figures["attestation"]["running_images"]["passed"] is True, figures["attestation"]
    depths = [d for _, d in figures["queue_depth"]]
    assert max(depths) == outage["queue_peak"] and depths[-1] <= 2, depths

    track = _picture(out / "track.png")
    _picture(out / "latency.png")
    _picture(out / "queue.png")
    # the driven path is drawn in blue-to-red over the grey road
    assert (cv2.cvtColor(track, cv2.COLOR_BGR2HSV)[:, :, 1] > 80).sum() > 500, "no driven path in track.png"
    _assert_nothing_left()


def test_ctrl_c_stops_everything_the_story_started(tmp_path: Path) -> None:
    log_path = tmp_path / "run.log"
    proc = _start(tmp_path / "out", log_path)
    try:
        wait_until(lambda: "[5/9]" in log_path.read_text(errors="replace"), 900,
                   "the story to reach step 5\n" + log_path.read_text(errors="replace")[-3000:])
        assert _running_from_work_dir()
        started = time.monotonic()
        _kill_group(proc, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(60)
        elapsed = time.monotonic() - started
    finally:
        _kill_group(proc, signal.SIGKILL)
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted: stopping everything" in output and "stopped everything the quickstart started" in output
    assert elapsed < 30, f"Ctrl-C took {elapsed:.1f} s"
    _assert_nothing_left()
