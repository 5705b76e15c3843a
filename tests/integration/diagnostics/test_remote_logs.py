"""`edgectl logs` against a real agent and module through a real broker: the agent's journal and
a module's output, --lines and --since, --follow through a broker restart (no line lost or
repeated), ending cleanly when edgectl goes away, and refusals: another device's identity (the
broker's ACL) and a device whose config switches remote logs off (after a reload)."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
import time

from devinfra.procs import wait_until

from .conftest import PLANTED, Device


def follow(device: Device, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str | None], list[str]]:
    proc = subprocess.Popen(device.edgectl_argv("logs", device.device_id, *args, "--follow"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=device.workdir)
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []

    def pump(stream: object, sink: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink(line.rstrip("\n"))  # type: ignore[operator]

    threading.Thread(target=pump, args=(proc.stdout, lines.put), daemon=True).start()
    threading.Thread(target=pump, args=(proc.stderr, errors.append), daemon=True).start()
    return proc, lines, errors


def ticks_until(lines: queue.Queue[str | None], until: int, timeout: float) -> list[int]:
    """Tick numbers seen until tick `until` (other lines skipped)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] < until:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "edgectl logs --follow ended"
        match = re.search(r" tick-(\d+)$", line)
        if match:
            seen.append(int(match.group(1)))
    return seen


def test_agent_journal_and_module_output(device: Device) -> None:
    agent = device.edgectl("logs", device.device_id, "--lines", "200")
    assert agent.returncode == 0, agent.stderr
    assert "EVENT=agent.started" in agent.stdout and "EVENT=mqtt.connected" in agent.stdout, agent.stdout[-3000:]

    wait_until(lambda: "tick-8" in device.edgectl("logs", device.device_id, "ticker").stdout, 60, "tick-8 logged")
    five = device.edgectl("logs", device.device_id, "ticker", "-n", "5")
    assert five.returncode == 0, five.stderr
    numbers = [int(m) for m in re.findall(r" tick-(\d+)$", five.stdout, re.MULTILINE)]
    assert len(five.stdout.splitlines()) == 5 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    everything = device.edgectl("logs", device.device_id, "ticker", "-n", "1000")
    # the module's stderr line came on stderr, its secrets redacted on the device
    assert "connecting with DB_PASSWORD=[REDACTED]" in everything.stderr, everything.stderr
    assert PLANTED["module_env"] not in everything.stderr + everything.stdout
    assert PLANTED["environment"] not in everything.stderr + everything.stdout
    assert device.key_lines[0] not in everything.stdout and "key line: [REDACTED]" in everything.stdout
    assert everything.stdout.count(" tick-0\n") == 1

    recent = device.edgectl("logs", device.device_id, "ticker", "--since", "2s", "-n", "1000")
    assert recent.returncode == 0 and " tick-0\n" not in recent.stdout and "tick-" in recent.stdout

    missing = device.edgectl("logs", device.device_id, "camera")
    assert missing.returncode == 1 and "no_such_module" in missing.stderr, missing.stderr


def test_follow_through_a_broker_restart_and_end_cleanly(device: Device) -> None:
    ticker, ticks, ticker_errors = follow(device, "ticker", "-n", "3")
    journal, journal_lines, _ = follow(device)
    try:
        before = ticks_until(ticks, ticks_until(ticks, 0, 60)[0] + 4, 60)  # a few lines as they are written
        device.env.broker.stop()
        time.sleep(3)  # the broker is down for a while: the module keeps writing
        device.env.broker.start()
        after = ticks_until(ticks, before[-1] + 16, 180)
        got = before + after
        assert got == list(range(got[0], got[-1] + 1)), f"lost or repeated lines: {got}"
        assert any("retrying" in e for e in ticker_errors), ticker_errors  # it did see the broker go

        # The agent's own journal, followed through the same restart, shows its reconnect.
        connected = 0
        deadline = time.monotonic() + 120
        while connected < 2:
            line = journal_lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None
            connected += "EVENT=mqtt.connected" in line
    finally:
        ticker.send_signal(signal.SIGINT)  # an operator's Ctrl-C ...
        journal.kill()  # ... and a laptop that dies in the middle of a long poll
    assert ticker.wait(30) == 0
    journal.wait(30)
    # Nothing keeps running on the device for a fleet side that went away: at most the one long
    # poll in flight, which ends after its wait.
    wait_until(lambda: device.agent.call("diagnostics")["activeLogRequests"] == 0, 60, "no log request left")  # type: ignore[index]
    counts = device.agent.call("diagnostics")["counts"]  # type: ignore[index]
    assert counts["logs.pages"] > 10


def test_requests_that_are_not_authorised_are_refused(device: Device) -> None:
    # Another device's identity: the broker's ACL does not let it write this device's commands.
    impostor = device.edgectl("logs", device.device_id, cert=f"{device.device_id}-other")
    assert impostor.returncode == 1 and "Not authorized" in impostor.stderr, impostor.stderr
    bundle = device.edgectl("support-bundle", device.device_id, cert=f"{device.device_id}-other")
    assert bundle.returncode == 1 and "Not authorized" in bundle.stderr, bundle.stderr

    # The device's own switch, applied by a reload: the device refuses and says why.
    config = device.agent.config_path
    config.write_text(config.read_text() + "[diagnostics]\nremote_logs = false\nremote_bundle = false\n")
    device.agent.signal(signal.SIGHUP)
    wait_until(lambda: device.status()["reported"].get("config", {}).get("changed") ==
               ["diagnostics.remote_bundle", "diagnostics.remote_logs"], 30, "reload applied")
    refused = device.edgectl("logs", device.device_id, "ticker")
    assert refused.returncode == 1 and "refused: not_authorised" in refused.stderr, refused.stderr
    assert "diagnostics.remote_logs = false" in refused.stderr
    no_bundle = device.edgectl("support-bundle", device.device_id)
    assert no_bundle.returncode == 1 and "not_authorised" in no_bundle.stderr
    counts = device.agent.call("diagnostics")["counts"]  # type: ignore[index]
    assert counts == {"logs.not_authorised": 1, "bundle.not_authorised": 1}
