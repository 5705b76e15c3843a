"""Kill -9 the agent while a module writes records with idempotency keys; the module re-sends
whatever got no answer. An independent subscriber (mosquitto_sub, not our code) sees every record
exactly once by content: one id per key, none missing. Without keys, a record committed just before
the kill and re-sent after it would be stored twice under two ids (issue 14)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import require_binary, wait_until
from devinfra.telemetry import BROKER_CONF, agent_config, answered

KILLS = 20





class Subscriber:
    """mosquitto_sub with a persistent session: every telemetry payload, one JSON document a line."""

    def __init__(self, out: Path, port: int) -> None:
        self.out = out
        self.argv = [require_binary("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c",
                     "-i", "independent-subscriber", "-t", "edge/dev1/telemetry/#"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Subscriber:
        self._fh = self.out.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._fh, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()

    def records(self) -> list[dict[str, object]]:
        text = self.out.read_text()
        out: list[dict[str, object]] = []
        for raw in text[: text.rfind("\n") + 1].splitlines():
            if raw.strip():
                batch = json.loads(raw)
                if batch["stream"] == "keyed":  # not the agent's own health records
                    out.extend(batch["records"])
        return out


def test_sigkill_mid_write_with_keys_and_resends_gives_zero_duplicates(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=BROKER_CONF).start()
    subscriber = Subscriber(tmp_path / "subscriber.jsonl", broker.port).start()
    agent = AgentProcess(
        tmp_path / "agent",
        agent_config(broker.port, tmp_path / "run", ["sender"], telemetry='compression = "none"\n'),
    )
    answers_file = tmp_path / "answers.txt"
    sender: subprocess.Popen[bytes] | None = None
    rng = random.Random(1414)
    try:
        agent.start()
        socket_path = tmp_path / "run/ingest/sender/telemetry.sock"
        sender = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("sender.py")), str(socket_path), str(answers_file),
             "--keyed"],
            start_new_session=True,
        )
        for _ in range(KILLS):
            before = answered(answers_file)
            time.sleep(rng.uniform(0.2, 1.2))
            # a kill mid-stream on a machine of any speed: the restarted agent answered 100 more first
            wait_until(lambda n=before: answered(answers_file) >= n + 100, 120, "100 more answers")
            agent.kill()  # SIGKILL, mid-write
            agent.start()
        time.sleep(0.5)
        sender.send_signal(signal.SIGTERM)
        sender.wait(60)  # it exits once every record it made has an answer
        answers: dict[int, list[tuple[str, bool, bool]]] = defaultdict(list)
        for line in answers_file.read_text().splitlines():
            rid, k, dup, resent = line.split()
            answers[int(k)].append((rid, dup == "1", resent == "1"))
        made = max(answers) + 1
        assert set(answers) == set(range(made)), "every record the module made got an answer"
        assert made > 2000, f"only {made} records: the test did not exercise much"
        resent_keys = [k for k, a in answers.items() if a[-1][2]]
        assert resent_keys, "no record was re-sent: no kill hit an unanswered write"
        committed_before_kill = [k for k in resent_keys if answers[k][-1][1]]

        wait_until(lambda: agent.call("telemetry")["depth"] == 0, 60, "the queue to drain")  # type: ignore[index]
        wanted = {f"{a[-1][0]}" for a in answers.values()}
        wait_until(lambda: wanted <= {str(r["id"]) for r in subscriber.records()}, 60, "every record at the subscriber")
        records = subscriber.records()
        ids_by_k: dict[int, set[str]] = defaultdict(set)
        for r in records:
            payload = r["payload"]
            assert isinstance(payload, dict)
            ids_by_k[int(payload["k"])].add(str(r["id"]))
        # Zero duplicates: one record (one id) per key, and it is the id the module was answered.
        stored_twice = {k: ids for k, ids in ids_by_k.items() if len(ids) > 1}
        assert not stored_twice, f"records stored more than once: {dict(list(stored_twice.items())[:5])}"
        assert set(ids_by_k) == set(range(made))
        assert all(ids_by_k[k] == {answers[k][-1][0]} for k in range(made))
        redelivered = len(records) - made  # MQTT at-least-once: the same id again, removable by id
        agent.stop()
        with contextlib.closing(sqlite3.connect(agent.state_dir / "telemetry.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        print(f"\n{made} records, {KILLS} kills, {len(resent_keys)} re-sent after no answer, "
              f"{len(committed_before_kill)} of them had been committed (answered duplicate), "
              f"0 stored twice; {redelivered} same-id MQTT redeliveries")
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
        agent.kill()
        subscriber.stop()
        broker.stop()
