"""Run the real `edge-agent run` as a subprocess, the way systemd would (minus systemd)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from devinfra.procs import ManagedProcess, wait_until
from edge_agent.control import exchange_line


class AgentProcess:
    def __init__(self, workdir: Path, config_text: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(config_text)
        self.state_dir = workdir / "state"
        self.env = env or {}
        self.proc: ManagedProcess | None = None

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    def start(self, wait: bool = True, timeout: float = 20) -> AgentProcess:
        argv = [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config_path),
                "--state-dir", str(self.state_dir)]
        self.proc = ManagedProcess("edge-agent", argv, self.workdir / "agent.log", env=self.env)
        self.proc.start()
        if wait:
            self.proc.wait_ready(self.answers, timeout=timeout)
        return self

    def answers(self) -> bool:
        try:
            self.call("ping", timeout=1)
            return True
        except OSError:
            return False

    def call(self, cmd: str, args: dict[str, object] | None = None, timeout: float = 10) -> object:
        """The agent's control socket, with the CLI's framing (edge_agent.control.exchange_line);
        OSError when it does not answer, RuntimeError with the agent's refusal."""
        answer = exchange_line(self.control_socket, {"cmd": cmd, "args": args or {}}, timeout)
        if not answer["ok"]:
            raise RuntimeError(answer["error"])
        return answer["result"]

    def log(self) -> str:
        return self.proc.log_tail(10_000) if self.proc else ""

    def wait_log(self, needle: str, timeout: float = 10) -> None:
        wait_until(lambda: needle in self.log(), timeout, f"agent log line containing {needle!r}\n{self.log()[-3000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.proc is not None
        self.proc.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.proc is None:
            return None
        p = self.proc.proc
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(10)
        finally:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
