"""A process that started real helpers (here a mosquitto, as bench/fleet_read.py does) stops them
when it is interrupted or terminated: they run in their own session, so nothing else would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devinfra.procs import wait_until
from tests.integration.desired.conftest import REPO

STARTER = """
import sys, time
from pathlib import Path
from devinfra.mosquitto import Mosquitto
broker = Mosquitto(Path(sys.argv[1])).start()
print(broker.proc.proc.pid, flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    pass  # no broker.stop(): the helpers' own exit guard must stop it
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here (it is its parent's to reap).
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_process_stops_its_mosquitto(tmp_path: Path, sig: signal.Signals) -> None:
    broker_pid = 0
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert starter.stdout is not None
        broker_pid = int(starter.stdout.readline())
        assert alive(broker_pid)
        starter.send_signal(sig)
        starter.wait(30)
        wait_until(lambda: not alive(broker_pid), 30, f"mosquitto {broker_pid} to stop after {sig.name}")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        if broker_pid and alive(broker_pid):  # (the test failed: do not leave it running either)
            os.kill(broker_pid, signal.SIGKILL)
