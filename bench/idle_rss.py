#!/usr/bin/env python3
"""Steady-state memory and CPU of `edge-agent run`, against a bare Python baseline in the same run.

Two scenarios (both by default):

  offline     the agent with a minimal config and no broker (a closed loopback port), no TPM,
              no trust keys, nothing deployed: the least it can cost.
  production  the quickstart's device, for real: mutual-TLS mosquitto with the per-device ACL,
              signed deployment documents, a cosign-signed pilot image from a local registry, a
              (software) TPM enrolled and attested, the pilot container driving and streaming
              telemetry through the agent. Built with the quickstart's own steps 1-4
              (quickstart/story.py), so the first run builds the base and pilot images (minutes).
              The agent's own process is sampled, plus any child it has (its TPM worker, while
              one is alive); the module containers are not the agent's memory and not counted.

Each scenario samples RSS (/proc/PID/status VmRSS) and CPU (utime + stime) every second for
--seconds. Next to it a `python3 -c 'import time; time.sleep(N)'` with the same interpreter is
sampled the same way, so the table also shows what the agent costs on top of the interpreter.

--breakdown adds where the memory goes: the RSS added by importing each dependency in turn,
in the order the agent loads them, in a fresh interpreter.

    python3 bench/idle_rss.py                          # both scenarios, 60 s each
    python3 bench/idle_rss.py --scenario offline --seconds 10 --breakdown

Target (reported, not asserted): production agent RSS at most 70 MB (issue 15; it was 40 MB
before the product's named stack, podman-py, requests and sqlite-utils, came back).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RSS_MB = 70.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

OFFLINE_CONFIG = """\
[state]
dir = "{state}"

[logging]
level = "info"
format = "text"

[mqtt]
host = "127.0.0.1"
port = {port}

[device]
id = "idle-rss"
"""

# What the agent imports, in load order; each row is what that import adds on top of the previous.
BREAKDOWN = [
    ("python3 itself", ""),
    ("asyncio + ssl", "import asyncio, ssl"),
    ("sqlite3", "import sqlite3"),
    ("pydantic", "import pydantic.main"),
    ("aiomqtt + paho-mqtt", "import aiomqtt"),
    ("cryptography (signatures)", "import cryptography.hazmat.primitives.asymmetric.ec"),
    ("requests (+ urllib3, idna, certifi, charset_normalizer)", "import requests"),
    ("podman-py", "import podman"),
    ("sqlite-utils (+ click, dateutil, pluggy; not numpy/pandas)", "import edge_agent.state_schema"),
    ("edge_agent config models", "import edge_agent.config"),
    ("edge_agent daemon + CLI", "import edge_agent.cli, edge_agent.daemon"),
    ("edge_agent twin", "import edge_agent.twin.component"),
    ("edge_agent deployment + runtime", "import edge_agent.deployment.reconciler, edge_agent.runtime.podman"),
    ("edge_agent trust", "import edge_agent.trust.component"),
    ("edge_agent telemetry", "import edge_agent.telemetry.component"),
    ("edge_agent attestation", "import edge_agent.attestation.service"),
]


@dataclass
class Series:
    name: str
    pids: Callable[[], list[int]]
    rss_kb: list[int] = field(default_factory=list)
    cpu_ticks_start: int = 0
    cpu_ticks_end: int = 0
    wall_start: float = 0.0
    wall_end: float = 0.0

    def start(self) -> None:
        self.cpu_ticks_start, self.wall_start = sum(cpu_ticks(p) for p in self.pids()), time.monotonic()

    def sample(self) -> None:
        self.rss_kb.append(sum(rss_kb(p) for p in self.pids()))

    def stop(self) -> None:
        # CPU of children that came and went is in the parent's cutime (once reaped): ignored,
        # the TPM worker runs rarely; the agent's own CPU is what is reported.
        self.cpu_ticks_end, self.wall_end = sum(cpu_ticks(p) for p in self.pids()), time.monotonic()

    def cpu_percent(self) -> float:
        wall = self.wall_end - self.wall_start
        return 100.0 * max(0, self.cpu_ticks_end - self.cpu_ticks_start) / CLK_TCK / wall if wall > 0 else 0.0


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0  # exited between listing and reading (a TPM worker timing out)
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # Fields after the ")" that closes comm; utime and stime are fields 14 and 15 overall.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def with_children(pid: int) -> list[int]:
    """pid and its descendants (the agent's TPM worker, when one is running)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


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


def sample(series: list[Series], seconds: int, alive: Callable[[], bool]) -> None:
    for s in series:
        s.start()
    for _ in range(seconds):
        time.sleep(1)
        for s in series:
            s.sample()
        if not alive():
            raise SystemExit("edge-agent exited during the run")
    for s in series:
        s.stop()


def baseline(seconds: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds + 600})"])


def run_offline(seconds: int) -> list[Series]:
    with tempfile.TemporaryDirectory(prefix="edge-idle-") as tmp:
        work = Path(tmp)
        config = work / "config.toml"
        config.write_text(OFFLINE_CONFIG.format(state=work / "state", port=free_port()))
        log_path = work / "agent.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("JOURNAL_STREAM", None)
        with log_path.open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
            )
        base = baseline(seconds)
        try:
            ready_s = wait_for_log(log_path, "agent.started", agent, timeout=60)
            print(f"offline: agent.started {ready_s:.2f} s after launch; sampling {seconds} s", flush=True)
            series = [Series("offline agent", lambda: with_children(agent.pid)),
                      Series("python3 sleep (baseline)", lambda: [base.pid])]
            sample(series, seconds, lambda: agent.poll() is None)
        finally:
            for proc in (agent, base):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (agent, base):
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return series


def podman_env() -> None:
    """What scripts/run does before the story: scripts/podman-env.sh (runc, container ulimits
    these machines allow)."""
    out = subprocess.run(["bash", "-c", f". {REPO_ROOT / 'scripts' / 'podman-env.sh'} && env -0"],
                         capture_output=True, check=True)
    for entry in out.stdout.split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep and key.startswith(("CONTAINERS_", "EDGE_")):
            os.environ[key] = value


def run_production(seconds: int) -> list[Series]:
    sys.path.insert(0, str(REPO_ROOT))
    podman_env()
    from quickstart.story import Options, Story

    root = REPO_ROOT / ".bench" / "idle-production"
    story = Story(Options(work=root / "run", out=root / "out", interactive=False))
    base: subprocess.Popen[bytes] | None = None
    try:
        print("production: setting up the quickstart device (steps 1-4 of scripts/run) ...", flush=True)
        story.prepare()
        story.step_infrastructure()
        story.step_identity()
        story.step_image()
        story.step_agent_and_deploy()
        assert story.procs is not None
        agent = story.procs.started["edge-agent"].popen
        # Settle: the deployment reported, the first telemetry batches uploaded, and the TPM worker
        # (enroll, attest and the image measurement just ran) gone after its idle timeout; a
        # worker spawned while sampling is counted (agent + children).
        settle_start = time.monotonic()
        time.sleep(10)
        while len(with_children(agent.pid)) > 1 and time.monotonic() - settle_start < 120:
            time.sleep(1)
        print(f"production: settled after {time.monotonic() - settle_start:.0f} s "
              f"(children left: {len(with_children(agent.pid)) - 1})", flush=True)
        base = baseline(seconds)
        print(f"production: pilot running under the agent (pid {agent.pid}); sampling {seconds} s", flush=True)
        series = [Series("production agent (+children)", lambda: with_children(agent.pid)),
                  Series("python3 sleep (baseline)", lambda: [base.pid] if base else [])]
        sample(series, seconds, lambda: agent.poll() is None)
        status = story.reported()
        modules = {name: m.get("runtimeStatus") for name, m in (status.get("modules") or {}).items()}
        print(f"production: modules {modules}; attestation available: "
              f"{(status.get('attestation') or {}).get('available')}; telemetry records sent: "
              f"{(status.get('telemetry') or {}).get('sentRecords')}", flush=True)
        return series
    finally:
        if base is not None and base.poll() is None:
            base.kill()
        story.cleanup()


def breakdown() -> list[tuple[str, float]]:
    script = (
        "import sys\n"
        "def rss():\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith('VmRSS'): return int(l.split()[1])\n"
        "for stmt in sys.argv[1:]:\n"
        "    exec(stmt)\n"
        "    print(rss(), flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", script, *(s or "pass" for _, s in BREAKDOWN)], env=env,
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    values = [int(v) / 1024 for v in out.stdout.split()]
    rows, prev = [], 0.0
    for (label, _), value in zip(BREAKDOWN, values, strict=True):
        rows.append((label, value - prev))
        prev = value
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seconds", type=int, default=60, help="sampling time per scenario (default 60)")
    parser.add_argument("--scenario", choices=["offline", "production", "both"], default="both")
    parser.add_argument("--breakdown", action="store_true", help="also show the RSS each dependency adds")
    args = parser.parse_args()

    results: list[Series] = []
    if args.scenario in ("offline", "both"):
        results += run_offline(args.seconds)
    if args.scenario in ("production", "both"):
        results += run_production(args.seconds)

    print()
    print(f"edge-agent memory over {args.seconds} s per scenario ({sys.executable}, Python {sys.version.split()[0]})")
    header = f"{'process':<30} {'RSS min MB':>10} {'avg MB':>8} {'max MB':>8} {'x baseline':>10} {'CPU %':>7}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for s in results:
        mb = [kb / 1024 for kb in s.rss_kb]
        is_base = s.name.startswith("python3")
        base_max = max(kb for b in results if b.name.startswith("python3") for kb in b.rss_kb) / 1024
        ratio = "" if is_base else f"{max(mb) / base_max:.1f}x"
        print(f"{s.name:<30} {min(mb):>10.1f} {sum(mb) / len(mb):>8.1f} {max(mb):>8.1f} {ratio:>10} "
              f"{s.cpu_percent():>7.2f}")
        if not is_base:
            verdicts.append(f"{s.name}: max {max(mb):.1f} MB -> {'OK' if max(mb) <= TARGET_RSS_MB else 'OVER'}")
    print("-" * len(header))
    print(f"target: agent max RSS <= {TARGET_RSS_MB:.0f} MB; " + "; ".join(verdicts))

    if args.breakdown:
        print()
        print("where the memory goes (RSS added by each import, in load order, fresh interpreter)")
        print(f"{'import':<56} {'+MB':>6}")
        print("-" * 63)
        rows = breakdown()
        for label, mb in rows:
            print(f"{label:<56} {mb:>6.1f}")
        print("-" * 63)
        libraries = sum(mb for label, mb in rows if not label.startswith("edge_agent"))
        ours = sum(mb for label, mb in rows if label.startswith("edge_agent"))
        print(f"{'interpreter and libraries':<56} {libraries:>6.1f}")
        print(f"{'edge_agent modules':<56} {ours:>6.1f}")
        print(f"{'total':<56} {libraries + ours:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
