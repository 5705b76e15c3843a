#!/usr/bin/env python3
"""Bytes the agent writes to storage per hour and per acknowledged telemetry record, against the
bytes of the records themselves, at the quickstart's steady state.

Steady state like the quickstart's device: a real mosquitto (devinfra) receives the uplink, and a
module sends the pilot's telemetry into the agent's ingest socket the way the pilot does
(modules/pilot/edge_pilot/telemetry.py): one `pilot.stats` record per second (the pilot's
telemetry.interval_s), with the pilot's payload shape (fps, latency p50/p99 per stage, the 20
per-frame latencies of each second), a ts and an idempotency key; the records are held
telemetry.flush_s (--flush-s, default the pilot's default, 10 s: groups of 10) and then sent
together, pipelined (every line, then every answer, in order). The --before agent gets its records
one at a time, each after the previous one's answer (--before-flush-s, default 0), as the pilot
sent them before flush_s existed. The agent's own health component runs as configured by default
(a health record every 5 minutes).

Measured: write_bytes of /proc/AGENT_PID/io (bytes the agent process caused to be written to the
storage layer: SQLite WAL frames, checkpoints, logs; whole 4 KiB pages dirtied) over --seconds
after a --warmup, divided by the records acknowledged in that window (the window starts and ends
right after a group's answers). The floor, measured in the same run: the bytes of those
records as the module sent them (the request lines: stream, priority, payload, ts, key).

--before REV also runs the agent of an older commit (its edge_agent and edge_shared, taken with
`git archive` into a temporary folder and put first on the agent's PYTHONPATH) the same way, so the
table holds before and now in one run.

    python bench/storage_writes.py                        # now only, 180 s
    python bench/storage_writes.py --before 0da8436 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from devinfra.agent import AgentProcess  # noqa: E402
from devinfra.mosquitto import Mosquitto  # noqa: E402
from devinfra.telemetry import BROKER_CONF, IngestClient, agent_config  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "modules" / "pilot"))
from edge_pilot.config import TelemetryConfig  # noqa: E402

PILOT_FLUSH_S = TelemetryConfig().flush_s

STAGES = ("capture", "preprocess", "inference", "actuation", "total", "frame_age", "capture_to_actuate")
TARGET_TIMES_FLOOR = 4.0


def pilot_payload(rng: random.Random, frames: int = 20) -> dict[str, object]:
    """The shape of the pilot's per-second summary (modules/pilot/edge_pilot/stats.py)."""
    lat = {s: {"p50": round(rng.uniform(0.5, 12), 3), "p99": round(rng.uniform(2, 30), 3)} for s in STAGES}
    return {"fps": 20.0, "frames": frames, "late": 0, "stale": 0, "errors": 0, "latency_ms": lat,
            "jitter_ms_p99": round(rng.uniform(0, 3), 3), "angle": round(rng.uniform(-1, 1), 4),
            "throttle": round(rng.uniform(0, 0.5), 4),
            "total_ms": [round(rng.uniform(1, 9), 2) for _ in range(frames)],
            "capture_to_actuate_ms": [round(rng.uniform(3, 14), 2) for _ in range(frames)]}


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


@dataclass
class Result:
    label: str
    seconds: float
    records: int
    line_bytes: int
    payload_bytes: int
    written: int
    status_figures: dict[str, object]
    flush_s: float

    @property
    def per_record(self) -> float:
        return self.written / max(1, self.records)

    @property
    def per_hour(self) -> float:
        return self.written * 3600 / self.seconds

    @property
    def floor_per_hour(self) -> float:
        return self.line_bytes * 3600 / self.seconds

    @property
    def times_floor(self) -> float:
        return self.written / max(1, self.line_bytes)


def run(label: str, work: Path, port: int, warmup: float, seconds: float, rate: float, flush_s: float,
        pythonpath: str | None) -> Result:
    env = {"PYTHONPATH": pythonpath + os.pathsep + os.environ.get("PYTHONPATH", "")} if pythonpath else {}
    # `python -m` puts the working directory first on sys.path: not the repository, or an older
    # agent would import this tree's edge_agent.
    os.chdir(work.parent)
    runtime = work / "run"
    agent = AgentProcess(work / "agent", agent_config(port, runtime, ["pilot"], device="storage-bench"), env=env)
    agent.start(timeout=60)
    assert agent.proc is not None and agent.proc.proc is not None
    pid = agent.proc.proc.pid
    rng = random.Random(7)
    prefix = os.urandom(6).hex()
    period = 1.0 / rate
    try:
        with IngestClient(runtime / "ingest" / "pilot" / "telemetry.sock") as module:
            number = 0
            start = time.monotonic()
            measuring = False
            t0 = w0 = 0.0
            records = line_bytes = payload_bytes = 0
            next_at = start
            held: list[bytes] = []  # request lines not yet sent, as the pilot holds them
            held_since = 0.0
            while True:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += period
                number += 1
                request = {"stream": "pilot.stats", "priority": 5, "payload": pilot_payload(rng),
                           "ts": round(time.time(), 3), "key": f"{prefix}-{number}"}
                if not held:
                    held_since = time.monotonic()
                held.append(json.dumps(request, separators=(",", ":")).encode() + b"\n")
                if time.monotonic() + period - held_since < flush_s:
                    continue  # the pilot sends what it holds once the oldest waited flush_s
                # Every held line at once (pipelined), then their answers, in order.
                module.send_raw(b"".join(held))
                for line in held:
                    answer = module.read_answer()
                    if not answer.get("ok"):
                        raise RuntimeError(f"agent refused a record: {answer}")
                    if measuring:
                        records += 1
                        line_bytes += len(line)
                        payload_bytes += len(json.dumps(json.loads(line)["payload"], separators=(",", ":")))
                held = []
                # The window starts and ends right after a group's answers: whole groups only.
                now = time.monotonic()
                if measuring and now - t0 >= seconds:
                    break
                if not measuring and now - start >= warmup:
                    measuring, t0, w0 = True, now, write_bytes(pid)
            elapsed = time.monotonic() - t0
            written = write_bytes(pid) - int(w0)
        status = agent.call("status")
        health = ((status.get("reported") or {}).get("health") or {}) if isinstance(status, dict) else {}
        figures = health.get("storageWrites") or {}
    finally:
        agent.stop()
    return Result(label, elapsed, records, line_bytes, payload_bytes, written, figures, flush_s)


def checkout(rev: str, into: Path) -> str:
    """edge_agent and edge_shared of `rev`, for the agent's PYTHONPATH."""
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive), rev, "edge_agent", "shared"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return f"{into}{os.pathsep}{into / 'shared'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="measured window per agent (default 180)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring (start-up writes)")
    parser.add_argument("--rate", type=float, default=1.0, help="records per second (the pilot: 1)")
    parser.add_argument("--flush-s", type=float, default=PILOT_FLUSH_S,
                        help="the pilot's telemetry.flush_s: records held, then sent together "
                        f"(default {PILOT_FLUSH_S:g})")
    parser.add_argument("--before", metavar="REV", help="also run the agent of this commit (git rev)")
    parser.add_argument("--before-flush-s", type=float, default=0.0,
                        help="flush_s of the pilot run against the --before agent (default 0: one record at a time, "
                        "how the pilot sent before flush_s)")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="storage-writes-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto", extra_conf=BROKER_CONF).start()
        try:
            if args.before:
                (work / "before").mkdir()
                path = checkout(args.before, work / "before")
                results.append(run(f"before ({args.before})", work / "run-before", broker.port, args.warmup,
                                   args.seconds, args.rate, args.before_flush_s, path))
            results.append(run("now", work / "run-now", broker.port, args.warmup, args.seconds, args.rate,
                               args.flush_s, None))
        finally:
            broker.stop()
    print(f"agent storage writes, a module sending pilot.stats at {args.rate:g}/s, held 'held s' then sent together, "
          "pipelined (0: one at a time, each after the last's answer), "
          f"telemetry synchronous=full, mosquitto on 127.0.0.1; {args.seconds:.0f} s measured after "
          f"{args.warmup:.0f} s; floor = the records' request lines")
    print(f"{'agent':<22} {'held s':>6} {'records':>8} {'floor B/rec':>12} {'payload B/rec':>14} {'written B/rec':>14} "
          f"{'x floor':>8} {'floor MB/h':>11} {'written MB/h':>13}")
    for r in results:
        print(f"{r.label:<22} {r.flush_s:>6g} {r.records:>8} {r.line_bytes / max(1, r.records):>12.0f} "
              f"{r.payload_bytes / max(1, r.records):>14.0f} {r.per_record:>14.0f} {r.times_floor:>8.2f} "
              f"{r.floor_per_hour / 1e6:>11.2f} {r.per_hour / 1e6:>13.2f}")
    for r in results:
        if r.status_figures:
            print(f"{r.label}: edge-agent status health.storageWrites = {json.dumps(r.status_figures)}")
    print(f"target: at most {TARGET_TIMES_FLOOR:g}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
