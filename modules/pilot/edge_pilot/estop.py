"""Emergency stop, usable by the agent without a new protocol.

Two ways, either one stops the car (throttle to stopped) until cleared:
- signal: SIGUSR1 latches the stop, SIGUSR2 clears it (``podman kill --signal USR1 <ctr>``);
- control file: while ``<control_dir>/estop`` exists the car is stopped (a mounted folder)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from .logs import fields, get_logger

log = get_logger(__name__)


class EmergencyStop:
    def __init__(self, control_dir: Path | None = None):
        self.control_file = Path(control_dir) / "estop" if control_dir else None
        self._latched = threading.Event()
        self.reason = ""

    def install_signals(self) -> None:
        signal.signal(signal.SIGUSR1, lambda *_: self.trigger("SIGUSR1"))
        signal.signal(signal.SIGUSR2, lambda *_: self.clear("SIGUSR2"))

    def trigger(self, why: str) -> None:
        self.reason = why
        self._latched.set()

    def clear(self, why: str) -> None:
        self._latched.clear()
        log.warning("emergency stop cleared by %s", why, extra=fields("estop_cleared", reason=why))

    def active(self) -> str | None:
        """The reason the car must stop, or None."""
        if self._latched.is_set():
            return f"emergency stop ({self.reason})"
        if self.control_file is not None and os.path.exists(self.control_file):
            return f"emergency stop (control file {self.control_file})"
        return None
