"""After its confirmation a release is still watched: restarts within one boot (crashes, watchdog
kills) send it back; reboots do not count, and the watch ends after its device time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.unit.selfupdate.test_files import fake_release
from tests.unit.selfupdate.test_guard import Box


class Clock:
    def __init__(self, tmp: Path, box: Box) -> None:
        self.uptime, self.boot = tmp / "uptime", tmp / "boot_id"
        box.env.update(EDGE_AGENT_UPTIME_FILE=str(self.uptime), EDGE_AGENT_BOOT_ID_FILE=str(self.boot))
        self.set("boot-a", 100)

    def set(self, boot: str, up: float) -> None:
        self.boot.write_text(boot + "\n")
        self.uptime.write_text(f"{up} 1.0\n")


def db(path: Path, written_by: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('written_by', ?)", (written_by,))
    conn.close()


@pytest.fixture
def confirmed(tmp_path: Path) -> tuple[Box, Clock]:
    """1.1 took over from 1.0, confirmed at uptime 100 of boot-a."""
    box = Box(tmp_path)
    clock = Clock(tmp_path, box)
    box.guard("start")
    fake_release(box.files, "1.0", "1.0")
    box.files.request("1.0")
    box.guard("start")
    assert box.files.confirm("1.0", "factory")
    box.guard("start")  # (1.0's own watch sees a new release below)
    db(box.state / "state.db", "1.0")
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    db(box.state / "state.db", "1.1")
    assert box.files.confirm("1.1", "1.0")
    box.guard("check")  # the timer's next check (within 15 s) starts the watch's time
    assert "boot=boot-a" in box.files.watch_file.read_text()
    return box, clock


def test_restarts_soon_after_the_confirmation_send_it_back(confirmed: tuple[Box, Clock]) -> None:
    box, clock = confirmed
    for n, up in enumerate((130, 160), 1):
        clock.set("boot-a", up)
        proc = box.guard("start")
        assert box.points_to().endswith("/1.1") and f"restart {n} of 3 after its confirmation" in proc.stderr
    clock.set("boot-a", 190)
    box.guard("start")  # the third restart within 90 s of device time
    assert box.points_to().endswith("/1.0")
    outcome = box.files.outcome()
    assert outcome is not None and (outcome["result"], outcome["version"], outcome["previous"]) == (
        "rolled_back", "1.1", "1.0")
    assert "restarted 3 times within 90s of device time after its confirmation" in outcome["reason"]
    assert "1.1" in box.files.bad_versions()
    assert not box.files.watch_file.exists() and box.files.trial() is None
    conn = sqlite3.connect(box.state / "state.db")
    assert conn.execute("SELECT value FROM meta").fetchone() == ("1.0",)  # the state of before the update
    conn.close()


def test_reboots_are_not_restarts(confirmed: tuple[Box, Clock]) -> None:
    box, clock = confirmed
    for boot in ("boot-b", "boot-c", "boot-d", "boot-e"):  # a car's Pi, power cut after power cut
        clock.set(boot, 20)
        box.guard("start")
    assert box.points_to().endswith("/1.1") and box.files.watch_file.exists()


def test_the_watch_ends_after_its_device_time(confirmed: tuple[Box, Clock]) -> None:
    box, clock = confirmed
    clock.set("boot-a", 100 + 1800)
    box.guard("start")
    assert not box.files.watch_file.exists()
    for up in (1910, 1920, 1930, 1940):
        clock.set("boot-a", up)
        box.guard("start")
    assert box.points_to().endswith("/1.1")  # crashes now are the release's own business, not the update's


def test_a_new_update_ends_the_watch(confirmed: tuple[Box, Clock]) -> None:
    box, _ = confirmed
    fake_release(box.files, "1.2", "1.2")
    box.files.request("1.2")
    box.guard("start")
    assert box.points_to().endswith("/1.2") and not box.files.watch_file.exists()
    trial = box.files.trial()
    assert trial is not None and trial.previous.endswith("/1.1")
