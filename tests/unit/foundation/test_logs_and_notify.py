"""Journal native protocol encoding, terminal/JSON formatting, sd_notify datagrams."""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.logs import (
    JournalHandler,
    JsonFormatter,
    TextFormatter,
    describe_exception,
    encode_journal_entry,
    journal_fields,
)
from edge_agent.systemd import Notifier, watchdog_interval


def record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("edge_agent.twin.session", logging.WARNING, "/x/session.py", 42, msg, args, None, "fn")
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def decode_journal(data: bytes) -> dict[str, str]:
    """Parse the native protocol the way journald does (both the simple and the binary form)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            out[line.decode()] = data[nl + 9 : nl + 9 + size].decode()
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return out


def test_only_upper_case_extras_are_journal_fields() -> None:
    rec = record(EVENT="desired.accepted", MODULE="pilot", lower="no", DEPLOYMENT=7)
    assert journal_fields(rec) == {"EVENT": "desired.accepted", "MODULE": "pilot", "DEPLOYMENT": "7"}


def test_journal_entry_round_trips_including_multiline_values() -> None:
    fields = {"MESSAGE": "line one\nline two", "EVENT": "x.y", "PRIORITY": "4"}
    assert decode_journal(encode_journal_entry(fields)) == fields


def test_journal_handler_sends_native_fields(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    handler = JournalHandler(path=str(path))
    try:
        handler.emit(record(EVENT="module.crashed", MODULE="pilot"))
        entry = decode_journal(server.recv(65536))
    finally:
        handler.close()
        server.close()
    assert entry["MESSAGE"] == "hello world"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "edge-agent"
    assert entry["EVENT"] == "module.crashed"
    assert entry["MODULE"] == "pilot"
    assert entry["CODE_FILE"] == "/x/session.py"
    assert entry["CODE_LINE"] == "42"


def test_text_format_is_one_line_with_fields() -> None:
    line = TextFormatter().format(record("bad\nthing", (), EVENT="e.v"))
    assert "\n" not in line
    assert "twin.session" in line
    assert "bad\\nthing" in line
    assert line.endswith("[EVENT=e.v]")


def test_json_format() -> None:
    doc = json.loads(JsonFormatter().format(record(MODULE="pilot")))
    assert doc["msg"] == "hello world"
    assert doc["level"] == "warning"
    assert doc["MODULE"] == "pilot"


@pytest.fixture
def notify_server(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    yield server, str(path)
    server.close()


def test_notifier_messages(notify_server: tuple[socket.socket, str]) -> None:
    server, path = notify_server
    notifier = Notifier(path)
    notifier.ready("running 3 components")
    assert server.recv(4096).decode().splitlines()[:2] == ["READY=1", "STATUS=running 3 components"]
    notifier.reloading()
    reloading = server.recv(4096).decode().splitlines()
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    notifier.watchdog()
    assert server.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert server.recv(4096).decode().startswith("STOPPING=1")
    notifier.close()


def test_notifier_abstract_namespace() -> None:
    name = f"edge-agent-test-{id(object())}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        assert Notifier("@" + name).send("STATUS=x")
        assert server.recv(100) == b"STATUS=x"
    finally:
        server.close()


def test_notifier_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _task_group_failure() -> BaseException:
    """What a TaskGroup raises when one task fails: a group that names no cause."""
    import asyncio

    async def fails() -> None:
        raise ValueError("embedded null byte")

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fails())

    try:
        asyncio.run(main())
    except BaseException as exc:
        return exc
    raise AssertionError("the task group did not fail")


def test_exception_group_is_unwrapped_to_its_cause() -> None:
    group = _task_group_failure()
    assert isinstance(group, ExceptionGroup)
    assert describe_exception(group) == "ValueError: embedded null byte"
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [KeyError("k")]), OSError(28, "No space left")])
    assert describe_exception(nested) == "KeyError: 'k'; OSError: [Errno 28] No space left"


def _with_exception(exc: BaseException) -> logging.LogRecord:
    rec = record("component twin failed", (), EVENT="component.failed")
    rec.levelno, rec.levelname = logging.ERROR, "ERROR"
    rec.exc_info = (type(exc), exc, exc.__traceback__)
    return rec


def test_text_format_shows_cause_on_the_line_and_the_traceback_below() -> None:
    text = TextFormatter().format(_with_exception(_task_group_failure()))
    first, *rest = text.splitlines()
    assert first.endswith("component twin failed: ValueError: embedded null byte  [EVENT=component.failed]")
    assert rest[0].strip().startswith("+ Exception Group Traceback") or rest[0].strip().startswith("Traceback")
    assert any("ValueError: embedded null byte" in line for line in rest)
    assert any("in fails" in line for line in rest), text  # the frame that raised
    assert all(line.startswith("    ") for line in rest)


def test_json_format_carries_the_traceback() -> None:
    doc = json.loads(JsonFormatter().format(_with_exception(_raised(RuntimeError("boom")))))
    assert doc["msg"] == "component twin failed: RuntimeError: boom"
    assert doc["traceback"].startswith("Traceback (most recent call last):")
    assert doc["traceback"].endswith("RuntimeError: boom")


def test_journal_entry_carries_traceback_and_cause(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    handler = JournalHandler(path=str(path))
    try:
        handler.emit(_with_exception(_task_group_failure()))
        entry = decode_journal(server.recv(262144))
    finally:
        handler.close()
        server.close()
    assert entry["EXCEPTION"] == "ValueError: embedded null byte"
    assert "ValueError: embedded null byte" in entry["TRACEBACK"]
    assert entry["MESSAGE"].startswith("component twin failed: ValueError: embedded null byte\n")
    assert entry["TRACEBACK"] in entry["MESSAGE"]
    assert entry["PRIORITY"] == "3"
