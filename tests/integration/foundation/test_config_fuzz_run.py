"""The config fuzzer, run side: a file that passes `edge-agent config check` starts. The corpus of
tests/config_corpus.py (the same seed as the check side) is checked again here; files that
pass are started as the real `edge-agent run` (a subprocess, as systemd starts it, against a real
mosquitto on loopback, both 127.0.0.1 and ::1), which must send READY=1, then stop on SIGTERM with
exit 0 and STOPPING=1, with no traceback and no "Logging error" in its output.

All passing files are run with EDGE_CONFIG_FUZZ_RUNS=all; by default a deterministic sample of
EDGE_CONFIG_FUZZ_RUNS (24) of them, always including the issue's named cases that pass
([::1] as the broker, which must really connect; logging.format = "journal" without journald,
whose messages must reach stderr). Reload (SIGHUP) refusing a file the same way, and always
returning systemd to READY=1, is shown at the end.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.mosquitto import Mosquitto
from devinfra.procs import ManagedProcess, free_port, wait_until
from tests.config_corpus import SEED, Case, base_doc, config_check, corpus, make_tls_files, q, render, with_value
from tests.integration.foundation.test_daemon_lifecycle import NotifySocket

FUZZ_SEED = int(os.environ.get("EDGE_CONFIG_FUZZ_SEED", SEED))
RUNS = os.environ.get("EDGE_CONFIG_FUZZ_RUNS", "24")
ALWAYS_RUN = ('mqtt.host = "[::1]"', 'logging.format = "journal" without journald')


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cr"))  # short: Unix socket paths under it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def broker(base: Path) -> Iterator[Mosquitto]:
    port = free_port()
    # Also on ::1, so a file saying host = "[::1]" can be seen to connect.
    broker = Mosquitto(base / "mosquitto", extra_conf=f"listener {port} ::1\n", port=port).start()
    yield broker
    broker.stop()


class RunningAgent:
    def __init__(self, workdir: Path, config: Path, env: dict[str, str | None]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.notify = NotifySocket(workdir / "notify.sock")
        env = {"CREDENTIALS_DIRECTORY": None, **env}
        # env(1) removes what the case wants unset (ManagedProcess only adds variables), then execs.
        unset = [arg for key, value in env.items() if value is None for arg in ("-u", key)]
        argv = ["env", *unset, sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)]
        self.log_path = workdir / "agent.log"
        added: dict[str, str] = {k: v for k, v in env.items() if v is not None}
        added["NOTIFY_SOCKET"] = str(self.notify.path)
        self.proc = ManagedProcess("edge-agent", argv, self.log_path, env=added)

    def start(self) -> None:
        self.proc.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, more_than: int = 0) -> None:
        wait_until(lambda: self.log().count(needle) > more_than, 60, f"{needle!r} in the log\n{self.log()[-2000:]}")

    def wait_ready(self, name: str) -> None:
        def ready() -> bool:
            if not self.proc.alive():
                raise AssertionError(f"{name}: the agent exited before READY=1:\n{self.log()[-3000:]}")
            return any("READY=1" in m for m in self.notify.drain())

        wait_until(ready, 120, f"READY=1 from the agent ({name})\n{self.log()[-2000:]}")

    def stop(self) -> int:
        assert self.proc.proc is not None
        self.proc.proc.send_signal(signal.SIGTERM)
        code = self.proc.proc.wait(60)
        self.notify.wait_for("STOPPING=1")
        return code

    def close(self) -> None:
        self.proc.kill()
        self.notify.close()


def sample(passing: list[Case]) -> list[Case]:
    if RUNS == "all":
        return passing
    named = [c for c in passing if c.name in ALWAYS_RUN]
    rest = [c for c in passing if c.name not in ALWAYS_RUN]
    count = max(0, int(RUNS) - len(named))
    return named + random.Random(FUZZ_SEED).sample(rest, min(count, len(rest)))


def test_every_file_that_passes_check_starts_and_stops_cleanly(base: Path, broker: Mosquitto) -> None:
    started = time.monotonic()
    cases = corpus(base, broker.port, make_tls_files(base / "tls"), seed=FUZZ_SEED)
    (base / "cases").mkdir()
    passing: list[tuple[Case, Path]] = []
    for number, case in enumerate(cases):
        path = base / "cases" / f"{number:04d}.toml"
        outcome = config_check(case, path)
        assert "Traceback" not in outcome.err, f"{case.name}\n{outcome.err}"
        if outcome.code == 0:
            passing.append((case, path))
    by_name = {c.name: p for c, p in passing}
    assert all(name in by_name for name in ALWAYS_RUN)
    chosen = sample([c for c, _ in passing])
    checked_s = time.monotonic() - started
    for number, case in enumerate(chosen):
        agent = RunningAgent(base / "runs" / str(number), by_name[case.name], case.env)
        try:
            agent.start()
            agent.wait_ready(case.name)
            if case.name == 'mqtt.host = "[::1]"':
                agent.wait_log(f"connected to broker [::1]:{broker.port}")
            code = agent.stop()
            log = agent.log()
        finally:
            agent.close()
        assert code == 0, f"{case.name}: exit {code}\n{log[-3000:]}"
        assert "Traceback" not in log and "Logging error" not in log, f"{case.name}\n{log[-3000:]}"
        level = tomllib.loads(by_name[case.name].read_text()).get("logging", {}).get("level", "info")
        if level in ("info", "debug"):
            assert "edge-agent stopped" in log, f"{case.name}: the last message is missing\n{log[-3000:]}"
        assert "[[" not in log.replace("[[trust", ""), f"{case.name}\n{log[-3000:]}"
        if case.name == 'logging.format = "journal" without journald':
            assert "logging text to stderr instead" in log and "started (device" in log, log
    print(f"\nconfig fuzzer run side (seed {FUZZ_SEED}): {len(cases)} files, {len(passing)} pass check "
          f"({checked_s:.0f} s); {len(chosen)} started as the real agent, READY=1 and a clean stop each "
          f"({time.monotonic() - started - checked_s:.0f} s)")


def test_reload_refuses_like_check_and_always_returns_to_ready(base: Path, broker: Mosquitto) -> None:
    """SIGHUP with files `config check` refuses (496-deep nesting, state.dir /proc, an unset secret):
    each refusal logged as FILE:LINE: KEY:, RELOADING=1 always followed by READY=1, the agent still
    running the old config; then a good file is applied."""
    workdir = base / "reload"
    workdir.mkdir()
    doc = with_value(base_doc(workdir, 0, broker.port), "logging", "level", q("info"))
    good = render(doc)
    config = workdir / "config.toml"
    config.write_text(good)
    agent = RunningAgent(workdir / "agent", config, {"EDGE_FUZZ_UNSET": None})
    try:
        agent.start()
        agent.wait_ready("reload")
        broken = {
            "nesting": (good + "[twin]\nx = " + "[" * 496 + "]" * 496 + "\n", f"{config}:", "twin.x: arrays/tables "
                        "nested 496 deep"),
            "state.dir /proc": (render(with_value(doc, "state", "dir", q("/proc"))), f"{config}:2: state.dir: ",
                                "cannot create a file in /proc"),
            "unset secret": (render(with_value(with_value(doc, "mqtt", "username", q("u")), "mqtt", "password",
                                               q("env:EDGE_FUZZ_UNSET"))), f"{config}:", "mqtt.password: secret "
                             "env:EDGE_FUZZ_UNSET: environment variable EDGE_FUZZ_UNSET is not set"),
        }
        for text, where, what in broken.values():
            config.write_text(text)
            agent.notify.messages.clear()
            refusals = agent.log().count("config reload refused")
            agent.proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            agent.wait_log("config reload refused", more_than=refusals)
            agent.notify.wait_for("RELOADING=1")
            ready = agent.notify.wait_for("READY=1")
            assert "STATUS=config reload refused" in ready, ready
            refused = [line for line in agent.log().splitlines() if "config reload refused" in line][-1]
            assert where in refused and what in refused, refused
            assert "Traceback" not in agent.log() and "RecursionError" not in agent.log()
            assert agent.proc.alive()
        config.write_text(good.replace('level = "info"', 'level = "debug"'))
        agent.notify.messages.clear()
        agent.proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        agent.wait_log("config reloaded; changed: logging.level")
        agent.notify.wait_for("READY=1")
        assert agent.stop() == 0
    finally:
        agent.close()
