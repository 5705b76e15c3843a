"""The README's first command in agent-only mode: `scripts/run --agent-only` starts the agent (and
a broker if none is running) with no manual step, and Ctrl-C stops everything within 2 s.
The default mode (the quickstart story) is tested in test_quickstart.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from devinfra.procs import port_open, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_scripts_run_starts_agent_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    broker_was_running = port_open(1883)
    log_path = tmp_path / "run.log"
    state = tmp_path / "state"  # not the checkout's .state: tests leave the repo tree alone
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(REPO / "scripts" / "run"), "--agent-only"], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "EDGE_AGENT_STATE_DIR": str(state)})
    try:
        wait_until(lambda: "EVENT=agent.started" in log_path.read_text(errors="replace"), 300,
                   "the agent to start via scripts/run")
        assert port_open(1883)
        # Ctrl-C in a terminal sends SIGINT to the whole foreground process group.
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text(errors="replace")
    assert elapsed < 2.0, f"Ctrl-C took {elapsed:.2f} s\n{output}"
    assert "EVENT=agent.stopped" in output, output
    if not broker_was_running:
        # The broker the script started is gone again, and it saved its persistence database
        # (mosquitto started as root must not drop to a user that cannot write there).
        wait_until(lambda: not port_open(1883), 30, "the script's broker to stop")
        broker_log = (state / "mosquitto.log").read_text(errors="replace")
        assert "Permission denied" not in broker_log, broker_log
        assert (state / "mosquitto" / "mosquitto.db").stat().st_size > 0, broker_log
    assert (state / "state.db").exists()
    assert not (state / "control.sock").exists()
