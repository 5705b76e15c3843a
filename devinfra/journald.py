"""A real systemd-journald of the test's own, for an agent that logs with logging.format =
"journal" and reads its journal back with journalctl (remote logs, the support bundle).

The agent runs in a private mount namespace (`unshare -m`, root): a tmpfs over /run (journald's
sockets and volatile journal) and over /var/log/journal (so nothing is written to the machine's
journal folder), journald started there, then the agent exec'd in its place. The machine's own
/run and journal are not touched. journald is stopped by `stop()` (its pid is written to a file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.procs import ManagedProcess, require_binary

JOURNALD = "/lib/systemd/systemd-journald"
SCRIPT = """\
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal
"$JOURNALD" &
echo $! > "$JOURNALD_PIDFILE"
# journald makes its sockets itself when not socket-activated; wait for them (bounded).
i=0
while [ ! -S /run/systemd/journal/socket ]; do
  i=$((i + 1)); [ $i -lt 600 ] || { echo "journald did not start" >&2; exit 1; }
  sleep 0.05
done
exec "$@"
"""


class JournaldAgent(AgentProcess):
    """AgentProcess (devinfra/agent.py) with a journald of its own."""

    @property
    def journald_pidfile(self) -> Path:
        return self.workdir / "journald.pid"

    def start(self, wait: bool = True, timeout: float = 30) -> JournaldAgent:
        if not Path(JOURNALD).exists():
            raise RuntimeError(f"{JOURNALD} is missing: apt-get install systemd (scripts/install-deps.sh)")
        argv = [require_binary("unshare"), "--mount", "--propagation", "private", "sh", "-c", SCRIPT, "agent",
                sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config_path),
                "--state-dir", str(self.state_dir)]
        env = {**self.env, "JOURNALD": JOURNALD, "JOURNALD_PIDFILE": str(self.journald_pidfile)}
        self.proc = ManagedProcess("edge-agent", argv, self.workdir / "agent.log", env=env)
        self.proc.start()
        if wait:
            self.proc.wait_ready(self.answers, timeout=timeout)
        return self

    def stop(self) -> int | None:
        try:
            return super().stop()
        finally:
            self.stop_journald()

    def kill(self) -> None:
        super().kill()
        self.stop_journald()

    def stop_journald(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.journald_pidfile.read_text().strip()), signal.SIGTERM)
