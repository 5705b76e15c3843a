"""`edge-agent logs MODULE` against the real podman service: the module's container is found by
its labels, stdout and stderr come out on the command's stdout and stderr (libpod's multiplexed
frames decoded, with or without a tty), --tail, and --follow prints lines as they are written,
ends when the container stops and on Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devinfra.podman import PodmanService, podman
from devinfra.procs import wait_until

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path, run_id: str, podman_service: PodmanService) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[device]\nid = "{run_id}"\n[mqtt]\nhost = "127.0.0.1"\n[podman]\nsocket = "{podman_service.url}"\n'
    )
    return path


def run_module(run_id: str, module: str, script: str, *, tty: bool = False, image: str) -> str:
    name = f"{run_id}-{module}"
    args = ["run", "-d", "--name", name, "--label", f"edge-agent.device={run_id}"]
    args += ["--label", f"edge-agent.module={module}", *(["-t"] if tty else []), image, "sh", "-c", script]
    podman(*args)
    return name


def wait_logged(container: str, text: str) -> None:
    def logged() -> bool:
        out = podman("logs", container, check=False)
        return text in out.stdout + out.stderr

    wait_until(logged, 30, f"{text!r} in the logs of {container}")


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "logs", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def follow(config: Path, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str | None]]:
    """`edge-agent logs -f`, its stdout lines delivered to a queue as they come (None at EOF)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "logs", "-f", *args, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def test_logs_split_stdout_and_stderr_and_tail(
    config: Path, run_id: str, busybox_image: str, cleanup_containers: None
) -> None:
    talker = run_module(
        run_id, "talker", "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2; sleep 600", image=busybox_image
    )
    counter = run_module(run_id, "counter", "for i in 1 2 3 4 5; do echo line-$i; done; sleep 600", image=busybox_image)
    with_tty = run_module(run_id, "tty", "echo on-a-tty; sleep 600", tty=True, image=busybox_image)
    for container, last in ((talker, "err-2"), (counter, "line-5"), (with_tty, "on-a-tty")):
        wait_logged(container, last)

    logs = cli(config, "talker")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["out-1", "out-2"]
    assert logs.stderr.splitlines() == ["err-1", "err-2"]

    tail = cli(config, "counter", "--tail", "2")
    assert (tail.returncode, tail.stdout, tail.stderr) == (0, "line-4\nline-5\n", "")
    everything = cli(config, "counter")
    assert everything.stdout == "".join(f"line-{i}\n" for i in range(1, 6))

    tty = cli(config, "tty")  # libpod frames a tty container's output too (as stdout)
    assert tty.returncode == 0 and tty.stdout.strip() == "on-a-tty", tty.stdout + tty.stderr


def test_follow_prints_lines_as_written_and_ends_with_the_container(
    config: Path, run_id: str, busybox_image: str, cleanup_containers: None
) -> None:
    container = run_module(run_id, "slow", "echo first; sleep 3; echo second; sleep 1", image=busybox_image)
    proc, lines = follow(config, "slow")
    try:
        assert lines.get(timeout=20) == "first"
        assert proc.poll() is None, "still following while the container runs"
        state = podman("container", "inspect", "--format", "{{.State.Running}}", container).stdout.strip()
        assert state == "true", "the first line arrived while the container was still running"
        assert lines.get(timeout=30) == "second"
        assert lines.get(timeout=30) is None
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_follow_stops_on_ctrl_c(config: Path, run_id: str, busybox_image: str, cleanup_containers: None) -> None:
    run_module(run_id, "forever", "echo hello; while true; do sleep 1; done", image=busybox_image)
    proc, lines = follow(config, "forever")
    try:
        assert lines.get(timeout=20) == "hello"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unknown_module_and_unreachable_podman(
    config: Path, run_id: str, tmp_path: Path, podman_service: PodmanService
) -> None:
    unknown = cli(config, "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "edge-agent: no container for module 'nope' on this device"

    missing = tmp_path / "missing.sock"
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[device]\nid = "{run_id}"\n[mqtt]\nhost = "127.0.0.1"\n[podman]\nsocket = "unix://{missing}"\n')
    down = cli(broken, "talker")
    assert down.returncode == 1
    assert f"edge-agent: cannot read logs from podman at unix://{missing}: " in down.stderr
    assert "No such file or directory" in down.stderr
