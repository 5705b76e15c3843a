"""The real daemon killed with SIGKILL 20+ times at random moments while a module sends and the
uplink uploads: no acknowledged record is lost; duplicates stay within the in-flight window and
carry the same id."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import wait_until
from devinfra.telemetry import BROKER_CONF, Follower, agent_config, answered, assert_in_order

KILLS = 22


BATCH, WINDOW = 50, 4



def test_sigkill_at_random_moments_loses_no_acknowledged_record(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=BROKER_CONF).start()
    follower = Follower(tmp_path / "fleet", broker.port).start()
    agent = AgentProcess(
        tmp_path / "agent",
        agent_config(broker.port, tmp_path / "run", ["sender"],
                     telemetry=f"batch_max_records = {BATCH}\ninflight_batches = {WINDOW}\n"),
    )
    acked_file = tmp_path / "acked.txt"
    sender: subprocess.Popen[bytes] | None = None
    rng = random.Random(1234)
    # The module sees its directory through a bind mount, as in its container: the socket the
    # agent re-creates after each restart must show up there.
    container_run = tmp_path / "container-run"
    container_run.mkdir()
    mounted = False
    try:
        agent.start()
        wait_until(lambda: (tmp_path / "run/ingest/sender/telemetry.sock").exists(), 10, "the module socket")
        subprocess.run(["mount", "--bind", str(tmp_path / "run/ingest/sender"), str(container_run)], check=True)
        mounted = True
        sender = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("sender.py")), str(container_run / "telemetry.sock"),
             str(acked_file)],
            start_new_session=True,
        )
        for _ in range(KILLS):
            before = answered(acked_file)
            time.sleep(rng.uniform(0.2, 1.5))
            # a kill mid-stream on a machine of any speed: the restarted agent answered 100 more first
            wait_until(lambda n=before: answered(acked_file) >= n + 100, 120, "100 more answers")
            agent.kill()
            agent.start()
        time.sleep(1.0)
        sender.send_signal(signal.SIGTERM)
        sender.wait(20)
        acked: dict[str, tuple[str, int]] = {}
        for line in acked_file.read_text().splitlines():
            rid, stream, k = line.split()
            acked[rid] = (stream, int(k))
        assert len(acked) > 2000, f"only {len(acked)} records acknowledged: the test did not exercise much"
        follower.wait_for_ids(set(acked), 60)
        wait_until(lambda: agent.call("telemetry")["depth"] == 0, 30, "the queue to drain")  # type: ignore[index]
        records = follower.records()
        # Everything acknowledged arrived with the content it was acknowledged for.
        firsts = {r["id"]: r for r in reversed(records) if not r.get("duplicate")}
        for rid, (stream, k) in acked.items():
            assert firsts[rid]["stream"] == stream and firsts[rid]["payload"]["k"] == k
        assert_in_order(records)
        for stream in ("fast", "slow"):
            ks = [r["payload"]["k"] for r in records if r["stream"] == stream and not r.get("duplicate")]
            assert ks == sorted(ks), f"stream {stream} out of order"
        # Duplicates: same id, and per crash at most what was in flight.
        dups = Counter(r["id"] for r in records if r.get("duplicate"))
        assert sum(dups.values()) <= KILLS * BATCH * WINDOW, sum(dups.values())
        assert all(rid in firsts for rid in dups)
        agent.stop()
        with contextlib.closing(sqlite3.connect(agent.state_dir / "telemetry.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        print(f"acked {len(acked)}, received {len(firsts)} distinct, {sum(dups.values())} duplicates, {KILLS} kills")
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
        if mounted:
            subprocess.run(["umount", str(container_run)], check=False)
        agent.kill()
        follower.stop()
        broker.stop()
