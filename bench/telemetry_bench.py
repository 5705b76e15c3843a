"""Telemetry throughput, one command:  python bench/telemetry_bench.py [--quick]

Runs the real daemon against a real mosquitto started here, and prints:
- durable enqueue rate, one record at a time (send, wait for the ack) and pipelined (group
  commit), for synchronous=full and normal;
- drain rate: a backlog queued while the broker was down, uploaded once it is up;
- raw `mosquitto_pub -q 1 -l` throughput to the same broker in the same run (the baseline);
- telemetry.db bytes per million records (100-byte JSON payloads), measured on 200k and scaled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import wait_until
from devinfra.telemetry import BROKER_CONF, IngestClient, agent_config
from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import NewRecord, TelemetryQueue

PAYLOAD = {"speed": 1.234, "steer": -0.5, "throttle": 0.31, "note": "x" * 40}


def enqueue_rates(work: Path, port: int, sync: str, one: int, many: int) -> tuple[float, float]:
    agent = AgentProcess(
        work / f"agent-{sync}",
        agent_config(port, work / f"run-{sync}", ["bench"], telemetry=f'synchronous = "{sync}"\n'),
    ).start()
    try:
        with IngestClient(work / f"run-{sync}/ingest/bench/telemetry.sock") as c:
            t = time.perf_counter()
            for i in range(one):
                assert c.send("one", {**PAYLOAD, "i": i})["ok"]
            one_rate = one / (time.perf_counter() - t)
            reqs = [{"stream": "many", "payload": {**PAYLOAD, "i": i}} for i in range(many)]
            t = time.perf_counter()
            answers = c.send_many(reqs, window=512)
            many_rate = many / (time.perf_counter() - t)
            assert all(a["ok"] for a in answers)
    finally:
        agent.stop()
    return one_rate, many_rate


def drain_rate(work: Path, broker: Mosquitto, backlog: int) -> tuple[float, float]:
    broker.stop()
    agent = AgentProcess(work / "agent-drain", agent_config(broker.port, work / "run-drain", ["bench"])).start()
    try:
        with IngestClient(work / "run-drain/ingest/bench/telemetry.sock") as c:
            answers = c.send_many([{"stream": "drain", "payload": {**PAYLOAD, "i": i}} for i in range(backlog)], 512)
            assert all(a["ok"] for a in answers)
        broker.start()
        t = time.perf_counter()
        wait_until(lambda: agent.call("telemetry")["depth"] == 0, 600, "drain", interval=0.02)  # type: ignore[index]
        elapsed = time.perf_counter() - t
    finally:
        agent.stop()
    return backlog / elapsed, (backlog / 500) / elapsed


def raw_pub_rate(broker: Mosquitto, n: int) -> float:
    import json

    line = json.dumps({**PAYLOAD, "i": 0}) + "\n"
    data = (line * n).encode()
    t = time.perf_counter()
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", "bench/raw", "-l"],
        input=data, check=True,
    )
    return n / (time.perf_counter() - t)


def db_bytes_per_million(work: Path, n: int) -> float:
    import json

    q = TelemetryQueue(work / "size" / "telemetry.db", 1 << 34, Rules(StreamRules(None, "drop-oldest", 0)), "normal")
    q.open()
    body = json.dumps({"note": "x" * 88}).encode()  # 100 bytes of JSON
    for _ in range(0, n, 1000):
        q.append([NewRecord("pilot", "pilot.stats", 5, None, body) for _i in range(1000)])
    conn = q._db()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    q.close()
    return pages * 4096 * (1_000_000 / n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    one, many, backlog, raw, size_n = (300, 5000, 10000, 10000, 50_000) if args.quick else (
        1000, 30000, 50000, 50000, 200_000)
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto", extra_conf=BROKER_CONF).start()
        try:
            rows = []
            for sync in ("full", "normal"):
                r1, rn = enqueue_rates(work, broker.port, sync, one, many)
                rows.append((f"durable enqueue, one by one (sync={sync})", r1, "records/s"))
                rows.append((f"durable enqueue, pipelined (sync={sync})", rn, "records/s"))
            raw_rate = raw_pub_rate(broker, raw)
            rec_s, msg_s = drain_rate(work, broker, backlog)
            rows.append(("drain to mosquitto (500 records/message)", rec_s, "records/s"))
            rows.append(("drain to mosquitto, MQTT messages", msg_s, "messages/s"))
            rows.append(("raw mosquitto_pub -q 1 -l (baseline)", raw_rate, "messages/s"))
            size = db_bytes_per_million(work, size_n)
        finally:
            broker.stop()
    print(f"{'measure':<46} {'value':>12}  unit        vs raw mosquitto_pub")
    for name, value, unit in rows:
        ratio = f"{value / raw_rate:6.2f}x" if unit in {"records/s", "messages/s"} else ""
        print(f"{name:<46} {value:>12,.0f}  {unit:<11} {ratio}")
    print(f"{'telemetry.db bytes per million 100-byte records':<46} {size:>12,.0f}  bytes       "
          f"({size / 1e6:.0f} B/record, measured on {size_n:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
