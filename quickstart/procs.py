"""Everything the quickstart starts, and how it is stopped again.

Each background process runs in its own session (process group) and is recorded in a pid file
under <work>/pids/, so that exit, Ctrl-C, an error, or the next run (after a crash or kill -9
of this one) can stop it and everything it spawned. Containers carry the label QS_LABEL and are
removed by label. Written by hand because it is ~100 lines of subprocess/os.killpg: no library
does "pid files + process groups + stale-run clean-up" with less.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# The label of the quickstart's containers. EDGE_QUICKSTART_LABEL names another one, so that a
# second quickstart on the same machine (a system test next to a developer's run) neither sees nor
# removes the other's containers.
QS_LABEL = os.environ.get("EDGE_QUICKSTART_LABEL") or "qs-quickstart"


@dataclass
class Started:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _group_alive(pgid: int) -> bool:
    """Does any live (non-zombie) process belong to process group pgid?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces, so split after the last ')'
        fields = text[text.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _kill_group(pgid: int, grace: float, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM to the group, SIGKILL to what is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()  # reap it, so a zombie does not count as running
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(5)


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.pid_dir = workdir / "pids"
        self.log_dir = workdir / "logs"
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: dict[str, Started] = {}

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Started:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        # pid and the program, so a later run never kills an unrelated process that reused the pid
        (self.pid_dir / f"{name}.pid").write_text(f"{popen.pid}\n{argv[0]}\n")
        started = Started(name, popen, log)
        self.started[name] = started
        return started

    def wait_ready(self, name: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        started = self.started[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if started.popen.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up; log {started.log}:\n{tail(started.log)}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s; log {started.log}:\n{tail(started.log)}")

    def stop(self, name: str, grace: float = 5.0) -> None:
        started = self.started.pop(name, None)
        if started is None:
            return
        # also when the leader already exited: its children still form its group
        _kill_group(started.popen.pid, grace, started.popen)
        (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):
            self.stop(name)

    def alive(self, name: str) -> bool:
        started = self.started.get(name)
        return started is not None and started.popen.poll() is None


def clean_stale(pid_dir: Path) -> list[str]:
    """Stop what a previous run recorded and did not stop (it was killed, or the machine hiccuped)."""
    stopped = []
    for pid_file in sorted(pid_dir.glob("*.pid")):
        lines = pid_file.read_text().split()
        if len(lines) >= 2 and lines[0].isdigit():
            pid, program = int(lines[0]), lines[1]
            cmd = _cmdline(pid)
            # cmd[0] is the interpreter for scripts (python3 .venv/bin/edge-agent ...)
            if program in cmd[:2] or any(os.path.basename(c) == os.path.basename(program) for c in cmd[:2]):
                _kill_group(pid, 5.0)
                stopped.append(f"{pid_file.stem} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    return stopped


def remove_containers() -> list[str]:
    """`podman rm -f` every container labelled as the quickstart's (this run's or a stale one)."""
    found = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label={QS_LABEL}", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    names = [n for n in found.stdout.split() if n]
    if names:
        subprocess.run(["podman", "rm", "-f", "-t", "2", *names], capture_output=True, check=False, timeout=120)
    return names


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
