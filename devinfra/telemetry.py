"""Shared pieces of the telemetry integration tests: config, a module-side client, the fleet side."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devinfra.procs import ManagedProcess, wait_until

# No queue limit: outage tests queue more than mosquitto's default 1000 QoS 1 messages for an
# offline persistent session (not in devinfra: mosquitto 2.0.11 drops clients that publish to a
# denied topic with it set). max_inflight_messages 20, mosquitto's default, written out: after a
# broker restart the broker re-sends to a persistent subscriber what it had in flight to it, so
# that window bounds the duplicates the fleet side sees, next to the device's own window.
BROKER_INFLIGHT_TO_SUBSCRIBER = 20
BROKER_CONF = f"max_queued_messages 0\nmax_inflight_messages {BROKER_INFLIGHT_TO_SUBSCRIBER}\n"


def agent_config(
    port: int,
    runtime_dir: Path,
    modules: list[str],
    device: str = "dev1",
    telemetry: str = "",
) -> str:
    mods = ", ".join(f'"{m}"' for m in modules)
    return (
        f'[device]\nid = "{device}"\n'
        f'[logging]\nlevel = "info"\nformat = "text"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_max_delay_s = 2\n'
        f'[telemetry]\nruntime_dir = "{runtime_dir}"\nmodules = [{mods}]\n{telemetry}\n'
    )


class IngestClient:
    """A module: JSON lines on its Unix socket."""

    def __init__(self, path: Path, timeout: float = 20) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + 10
        while True:  # the agent opens module sockets just after it answers on its control socket
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, line: bytes) -> None:
        self.sock.sendall(line)

    def read_answer(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("agent closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, stream: str, payload: Any, priority: int | None = None, **extra: Any) -> dict[str, Any]:
        return self.send_many([{"stream": stream, "payload": payload, "priority": priority, **extra}])[0]

    def send_many(self, requests: list[dict[str, Any]], window: int = 200) -> list[dict[str, Any]]:
        """Pipelined: up to `window` requests outstanding."""
        lines = [json.dumps({k: v for k, v in r.items() if v is not None}).encode() + b"\n" for r in requests]
        answers: list[dict[str, Any]] = []
        sent = 0
        while len(answers) < len(lines):
            if sent < len(lines) and sent - len(answers) < window:
                chunk_end = min(len(lines), len(answers) + window)
                self.sock.sendall(b"".join(lines[sent:chunk_end]))
                sent = chunk_end
            answers.append(self.read_answer())
        return answers


class Follower:
    """`edgectl telemetry DEVICE --json --all` with a persistent session: what the fleet receives."""

    def __init__(self, workdir: Path, port: int, device: str = "dev1", client_id: str = "fleet-follower",
                 extra: Sequence[str] = ()) -> None:
        """`extra`: more edgectl flags, e.g. the fleet's --prefix and mutual-TLS flags."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "follower.jsonl"
        argv = [sys.executable, "-m", "edgectl.cli", "telemetry", device, "--host", "127.0.0.1",
                "--port", str(port), "--json", "--all", "--client-id", client_id, *extra]
        self.proc = ManagedProcess("edgectl-telemetry", argv, workdir / "follower.log")
        self.proc.log_path = workdir / "follower.log"
        self._argv = argv

    def start(self) -> Follower:
        import subprocess

        self._fh = self.out.open("ab")
        self.popen = subprocess.Popen(self._argv, stdout=self._fh, stderr=open(self.proc.log_path, "ab"),  # noqa: SIM115
                                      start_new_session=True)
        time.sleep(1.0)  # let it subscribe
        return self

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(5)
        except Exception:
            self.popen.kill()
        self._fh.close()

    def records(self) -> list[dict[str, Any]]:
        out = []
        text = self.out.read_text()
        # The follower may be writing a line right now: only complete lines count.
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def distinct_ids(self) -> set[str]:
        return {r["id"] for r in self.records() if not r.get("duplicate")}

    def wait_for_ids(self, ids: set[str], timeout: float) -> None:
        def have_all() -> bool:
            return ids <= self.distinct_ids()

        try:
            wait_until(have_all, timeout, "the fleet to receive every acknowledged record", interval=0.3)
        except TimeoutError:
            missing = ids - self.distinct_ids()
            example = sorted(missing)[:5]
            raise AssertionError(f"{len(missing)} acknowledged records never arrived, e.g. {example}") from None


def assert_in_order(records: list[dict[str, Any]]) -> None:
    """First arrivals of each stream come in seq order (duplicates may repeat earlier ones)."""
    last: dict[str, int] = {}
    for rec in records:
        if rec.get("duplicate"):
            continue
        stream = rec["stream"]
        assert rec["seq"] > last.get(stream, 0), f"stream {stream}: seq {rec['seq']} after {last.get(stream)}"
        last[stream] = rec["seq"]


def answered(path: Path) -> int:
    """How many answers a test module (tests/integration/telemetry/sender.py) has written: its lines."""
    return path.read_text().count("\n") if path.exists() else 0
