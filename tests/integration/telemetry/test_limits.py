"""Limits with the real daemon: byte cap under a flood (file sizes sampled throughout), drops and
refusals counted and reported, TTL expiry counted, a full disk (a small tmpfs the test mounts)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.procs import free_port, wait_until
from devinfra.telemetry import IngestClient, agent_config
from edge_agent.telemetry.queue import WAL_BOUND, file_limit

CAP = 256 * 1024


def status(agent: AgentProcess) -> dict[str, Any]:
    result = agent.call("telemetry")
    assert isinstance(result, dict)
    return result


class FileSampler(threading.Thread):
    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.max_db = self.max_wal = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            for suffix, attr in (("", "max_db"), ("-wal", "max_wal")):
                with contextlib.suppress(FileNotFoundError):
                    setattr(self, attr, max(getattr(self, attr), os.stat(f"{self.db}{suffix}").st_size))
            time.sleep(0.005)


def test_cap_holds_under_flood_and_drops_and_expiry_are_counted(tmp_path: Path) -> None:
    # No broker listens on this port: nothing leaves the queue.
    agent = AgentProcess(
        tmp_path / "agent",
        agent_config(
            free_port(), tmp_path / "run", ["flood"],
            telemetry=f'cap_bytes = {CAP}\n[telemetry.streams.keep]\npolicy = "refuse-new"\n'
            "[telemetry.streams.short]\nttl_s = 1\n",
        ),
    ).start()
    sampler = FileSampler(agent.state_dir / "telemetry.db")
    sampler.start()
    try:
        with IngestClient(tmp_path / "run/ingest/flood/telemetry.sock") as client:
            keep = client.send_many([{"stream": "keep", "payload": {"i": i}} for i in range(200)])
            assert all(a["ok"] for a in keep)
            flood = client.send_many(
                [{"stream": "bulk", "payload": {"i": i, "pad": "p" * 200}} for i in range(20_000)], window=500
            )
            assert all(a["ok"] for a in flood), "drop-oldest makes room for every new bulk record"
            short = client.send_many([{"stream": "short", "priority": 1, "payload": {"i": i}} for i in range(50)])
            assert all(a["ok"] for a in short)
            refused = client.send_many([{"stream": "keep", "payload": {"late": i}} for i in range(30)])
        assert {a.get("code") for a in refused} == {"queue_full"}
        assert "refuse-new" in refused[0]["error"]
        st = status(agent)
        assert st["bytes"] <= CAP
        assert st["streams"]["keep"]["depth"] == 200, "refuse-new records are never evicted"
        bulk_depth = st["streams"]["bulk"]["depth"]
        assert st["drops"]["bulk"]["evicted"] == 20_000 - bulk_depth, "every eviction is counted"
        assert st["refused"]["keep"]["queue_full"] == 30
        assert "keep" not in st["drops"]
        # TTL: the housekeeping sweep runs every few seconds.
        wait_until(lambda: status(agent)["drops"].get("short", {}).get("expired") == 50, 15, "short records to expire")
        # The same figures reach the reported state (and `edge-agent status`).
        wait_until(
            lambda: agent.call("status")["reported"]["telemetry"]["drops"].get("short")  # type: ignore[index]
            == {"expired": 50},
            10,
            "reported state to show the expiry",
        )
        sampler.running = False
        sampler.join()
        assert sampler.max_db <= file_limit(CAP), (sampler.max_db, file_limit(CAP))
        assert sampler.max_wal <= WAL_BOUND, (sampler.max_wal, WAL_BOUND)
        print(f"max db {sampler.max_db} (limit {file_limit(CAP)}), max wal {sampler.max_wal} (bound {WAL_BOUND})")
    finally:
        sampler.running = False
        agent.stop()
    with contextlib.closing(sqlite3.connect(agent.state_dir / "telemetry.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Drops survive a restart: they are counted in the same transaction as the deletes.
        assert dict(db.execute("SELECT reason, n FROM drops WHERE stream='short'").fetchall()) == {"expired": 50}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "agent" / "state"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write until the file system is full (unbuffered, so nothing is left to fail at close)."""
    with path.open("wb", buffering=0) as f:
        for block in (b"\0" * 65536, b"\0" * 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(block)


def test_full_disk_refuses_clearly_keeps_the_database_whole_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", agent_config(free_port(), tmp_path / "run", ["mod"])).start()
    acked: set[str] = set()
    try:
        with IngestClient(tmp_path / "run/ingest/mod/telemetry.sock") as client:
            first = client.send_many([{"stream": "data", "payload": {"i": i, "pad": "d" * 300}} for i in range(500)])
            assert all(a["ok"] for a in first)
            acked |= {a["id"] for a in first}
            fill(small_fs / "filler")
            codes: list[str] = []
            for i in range(200):
                answers = client.send_many([{"stream": "data", "payload": {"j": i, "pad": "e" * 2000}}] * 20)
                acked |= {a["id"] for a in answers if a["ok"]}
                codes += [a["code"] for a in answers if not a["ok"]]
                if codes:
                    break
            assert codes and set(codes) == {"disk_full"}, codes
            # The queue may have given pages back since (a WAL checkpoint): fill what it freed, and
            # send a record larger than the failed group, so no slack left in the WAL file takes it.
            fill(small_fs / "filler-2")
            refusal = client.send("data", {"while": "full", "pad": "f" * 100_000})
            assert refusal["ok"] is False and refusal["code"] == "disk_full"
            assert "disk is full" in refusal["error"]
            st = status(agent)
            assert st["diskFull"] is True and st["refused"]["data"]["disk_full"] >= 1
            # The running agent holds telemetry.db exclusively: check what is on the disk now (the
            # file and its WAL, as a power cut would leave them) in a copy.
            on_disk = tmp_path / "on-disk"
            on_disk.mkdir()
            for suffix in ("", "-wal"):
                source = agent.state_dir / f"telemetry.db{suffix}"
                if source.exists():
                    shutil.copyfile(source, on_disk / source.name)
            with contextlib.closing(sqlite3.connect(on_disk / "telemetry.db")) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # Space returns: the agent takes records again by itself, no restart.
            (small_fs / "filler").unlink()
            (small_fs / "filler-2").unlink()
            again = client.send("data", {"after": "recovery"})
            assert again["ok"] is True, again
            acked.add(again["id"])
            assert status(agent)["diskFull"] is False
    finally:
        agent.stop()
    with contextlib.closing(sqlite3.connect(agent.state_dir / "telemetry.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        epoch = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
        stored = {f"{epoch}-{n}" for (n,) in db.execute("SELECT n FROM records")}
    assert acked <= stored, f"{len(acked - stored)} acknowledged records missing after the disk-full episode"
