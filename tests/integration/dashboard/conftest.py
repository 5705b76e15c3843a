"""The dashboard's browser tests: `edgectl dashboard` started as the operator starts it (its own
process, a free loopback port), and Debian's Chromium, headless, driven through Playwright.

Screenshots go to the test's temp folder; with EDGE_SCREENSHOTS_DIR set they are also copied
there (scripts/dashboard-screenshots.sh sets it to docs/images): tests never change the repo
tree by themselves.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devinfra.procs import ManagedProcess
from tests.integration.fleet.conftest import fleet  # noqa: F401 - the real-agents fixture, shared

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"
T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a worker thread: Playwright's sync API keeps an event loop running in this
    one, and helpers that call asyncio.run() cannot run beside it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def hermetic(tmp_path: Path) -> list[str]:
    """Flags that keep the dashboard off the user's own rollout file and enrollment records."""
    return ["--state", str(tmp_path / "rollouts.db"), "--attestation-dir", str(tmp_path / "enrolled")]


class DashboardProcess:
    """`python -m edgectl.cli dashboard ...` with the given flags; `url` once it listens."""

    def __init__(self, workdir: Path, flags: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "dashboard.log"
        self.proc = ManagedProcess(
            "dashboard", [sys.executable, "-m", "edgectl.cli", "dashboard", "--listen", "127.0.0.1:0",
                          *flags], self.log, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.url = ""

    def start(self, timeout: float = 60) -> DashboardProcess:
        self.proc.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("edgectl dashboard: http"):
                    self.url = line.split()[-1]
                    return self
            if not self.proc.alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"the dashboard did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture
def start_dashboard(tmp_path: Path) -> Iterator[Callable[[list[str]], DashboardProcess]]:
    started: list[DashboardProcess] = []

    def start(flags: list[str]) -> DashboardProcess:
        board = DashboardProcess(tmp_path / f"dashboard-{len(started)}", flags).start()
        started.append(board)
        return board

    yield start
    for board in started:
        board.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium (apt: chromium), headless. Root cannot use Chromium's sandbox."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/install-deps.sh (Debian package chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            yield browser
        finally:
            browser.close()


class Screenshots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page: Any, name: str) -> Path:
        path = self.folder / f"dashboard-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Screenshots]:
    shots = Screenshots(tmp_path / "screenshots")
    yield shots
    target = os.environ.get("EDGE_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in shots.taken:
            shutil.copy2(path, Path(target) / path.name)


class Publisher:
    """mosquitto_pub with one identity (a device's or the fleet's certificate, or none)."""

    def __init__(self, port: int, tls: list[str] | None = None) -> None:
        self.port = port
        self.tls = tls or []

    def publish(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        out = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-V", "mqttv5", "-q", "1", *self.tls,
             *(["-r"] if retain else []), "-t", topic, "-s"],
            input=body, capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
