#!/usr/bin/env python3
"""Idle memory and CPU of `edge-agent run`, against a bare Python baseline in the same run.

Starts the agent from this checkout with a temporary config and state dir (no broker needed),
waits until it logged agent.started, then samples every second for --seconds:
  RSS from /proc/PID/status (VmRSS) and CPU from /proc/PID/stat (utime + stime).
Next to it runs `python3 -c 'import time; time.sleep(N)'` with the same interpreter, sampled
the same way, so the table shows what the agent costs on top of the interpreter itself.

    python3 bench/idle_rss.py               # 60 s
    python3 bench/idle_rss.py --seconds 10

Target (reported, not asserted): agent RSS at most 40 MB.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RSS_MB = 40.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
[state]
dir = "{state}"

[logging]
level = "info"
format = "text"

[mqtt]
host = "127.0.0.1"
port = {port}
"""


@dataclass
class Series:
    name: str
    pid: int
    rss_kb: list[int] = field(default_factory=list)
    cpu_ticks_start: int = 0
    cpu_ticks_end: int = 0
    wall_start: float = 0.0
    wall_end: float = 0.0

    def sample(self) -> None:
        self.rss_kb.append(rss_kb(self.pid))

    def cpu_percent(self) -> float:
        wall = self.wall_end - self.wall_start
        return 100.0 * (self.cpu_ticks_end - self.cpu_ticks_start) / CLK_TCK / wall if wall > 0 else 0.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the ")" that closes comm; utime and stime are fields 14 and 15 overall.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if needle in path.read_text(errors="replace"):
            return time.monotonic() - start
        if proc.poll() is not None:
            raise SystemExit(f"edge-agent exited with {proc.returncode}:\n{path.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"edge-agent did not log {needle!r} within {timeout} s:\n{path.read_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="sampling time (default 60)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edge-idle-") as tmp:
        work = Path(tmp)
        config = work / "config.toml"
        # A closed loopback port: the agent has no broker, as on a device that is offline.
        config.write_text(CONFIG.format(state=work / "state", port=free_port()))
        log_path = work / "agent.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("JOURNAL_STREAM", None)
        with log_path.open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work,
            )
        baseline = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.seconds + 60})"], cwd=work)
        try:
            ready_s = wait_for_log(log_path, "agent.started", agent, timeout=60)
            series = [Series("edge-agent run", agent.pid), Series("python3 sleep (baseline)", baseline.pid)]
            for s in series:
                s.cpu_ticks_start, s.wall_start = cpu_ticks(s.pid), time.monotonic()
            for _ in range(args.seconds):
                time.sleep(1)
                for s in series:
                    s.sample()
            for s in series:
                s.cpu_ticks_end, s.wall_end = cpu_ticks(s.pid), time.monotonic()
            if agent.poll() is not None:
                raise SystemExit(f"edge-agent exited during the run:\n{log_path.read_text()}")
        finally:
            for proc in (agent, baseline):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (agent, baseline):
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print(f"idle edge-agent over {args.seconds} s ({sys.executable}, Python {sys.version.split()[0]})")
    print(f"time from start to agent.started: {ready_s:.2f} s")
    print()
    header = f"{'process':<26} {'RSS min MB':>10} {'avg MB':>8} {'max MB':>8} {'CPU %':>7}"
    print(header)
    print("-" * len(header))
    for s in series:
        mb = [kb / 1024 for kb in s.rss_kb]
        print(f"{s.name:<26} {min(mb):>10.1f} {sum(mb) / len(mb):>8.1f} {max(mb):>8.1f} {s.cpu_percent():>7.2f}")
    agent_max = max(series[0].rss_kb) / 1024
    base_max = max(series[1].rss_kb) / 1024
    print("-" * len(header))
    print(f"agent / baseline (max RSS): {agent_max / base_max:.1f}x   agent - baseline: {agent_max - base_max:.1f} MB")
    verdict = "OK" if agent_max <= TARGET_RSS_MB else "OVER TARGET"
    print(f"target: agent max RSS <= {TARGET_RSS_MB:.0f} MB -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
