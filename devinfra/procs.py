"""Start and stop real helper processes (mosquitto, registry, podman service, swtpm) for tests.

Every process is stopped by the fixture that started it, also when a test fails; output goes
to a log file whose tail is shown when start-up fails. The processes run in their own session
(a Ctrl-C at the terminal does not reach them), so whatever is still running when this process
exits is stopped then: at interpreter exit (atexit: a normal end, an unhandled exception, Ctrl-C)
and on SIGTERM or SIGHUP, which then act as Ctrl-C does (KeyboardInterrupt: `finally` blocks and
atexit run, and pytest ends the session as on Ctrl-C rather than failing one test and going on,
which SystemExit would do). Only a SIGKILL of this process leaves them behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

# Signals whose default action ends this process without running `finally` or atexit.
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_running: set[ManagedProcess] = set()
_exit_guarded = False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Never skip: CI installs everything (scripts/install-deps.sh); a missing tool is a failure.
        raise RuntimeError(f"{name} is not installed: run scripts/install-deps.sh")
    return path


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def signals_to_take_over(handlers: Mapping[signal.Signals, Any], main_thread: bool) -> list[signal.Signals]:
    """The exit signals whose handler is still the default (another handler, e.g. pytest's or
    the caller's own, is left alone); none outside the main thread (Python allows handlers
    only there)."""
    if not main_thread:
        return []
    return [sig for sig in EXIT_SIGNALS if handlers.get(sig) == signal.SIG_DFL]


def _interrupt_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _stop_running() -> None:
    for proc in list(_running):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)


def _guard_exit() -> None:
    """Once per process: stop every still-running helper when this process exits."""
    global _exit_guarded
    if _exit_guarded:
        return
    _exit_guarded = True
    atexit.register(_stop_running)
    main = threading.current_thread() is threading.main_thread()
    for sig in signals_to_take_over({s: signal.getsignal(s) for s in EXIT_SIGNALS}, main):
        signal.signal(sig, _interrupt_on_signal)


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        _guard_exit()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})}, start_new_session=True,
        )
        log.close()
        _running.add(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            return predicate()

        wait_until(ready, timeout, f"{self.name} to start\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        _running.discard(self)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
