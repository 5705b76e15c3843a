"""The device's `logs` and `support_bundle` commands with fake sources, through the same code the
MQTT command registry runs: refusals, caps, rate limits, the follow long poll, redaction, chunks."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.attestation.mqtt_command import dispatch
from edge_agent.config import parse_config
from edge_agent.diagnostics.log_lines import LogLine
from edge_agent.diagnostics.log_sources import NoSuchSource
from edge_agent.diagnostics.service import CHUNK_BYTES, MAX_ANSWER_BYTES, REQUEST_BURST, DiagnosticsService


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Journal:
    """A journal with entries i=0..n-1, read like read_journal."""

    def __init__(self, n: int, text: str = "entry {i}") -> None:
        self.entries = [LogLine(float(i), text.format(i=i), "info", position={"j": f"c{i}"}) for i in range(n)]
        self.calls = 0

    def __call__(self, lines: int, since: float | None, cursor: dict[str, Any] | None) -> list[LogLine]:
        self.calls += 1
        if cursor and "j" in cursor:
            start = int(cursor["j"][1:]) + 1
            return self.entries[start : start + lines]
        return self.entries[-lines:]


def service(tmp_path: Path, extra: str = "", journal: Any = None, **kw: Any) -> DiagnosticsService:
    config = parse_config(f'[state]\ndir = "{tmp_path}"\n{extra}')

    def no_module(*args: Any) -> list[LogLine]:
        raise NoSuchSource(f"no container for module {args[2]!r} on this device")

    return DiagnosticsService(config, kw.pop("make_bundle", lambda: b"bundle"), kw.pop("secrets", lambda: []),
                              journal=journal or Journal(5), module=kw.pop("module", no_module),
                              clock=kw.pop("clock", Clock()), poll_s=0.01, **kw)


async def call(svc: DiagnosticsService, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return await dispatch(svc.handlers()[name], json.dumps(args).encode())


async def test_switched_off_on_the_device_is_refused(tmp_path: Path) -> None:
    svc = service(tmp_path, "[diagnostics]\nremote_logs = false\nremote_bundle = false\n")
    for name, args in (("logs", {"source": "agent"}), ("support_bundle", {"action": "create"})):
        answer = await call(svc, name, args)
        assert answer["ok"] is False and answer["error"]["code"] == "not_authorised", answer
        assert "diagnostics.remote_" in answer["error"]["description"]


@pytest.mark.parametrize("args", [{"lines": 0}, {"lines": 1001}, {"lines": "5"}, {"source": "../etc"},
                                  {"source": "Agent"}, {"wait_s": 21}, {"since": "yesterday"}, {"extra": 1},
                                  {"cursor": "{}"}, {"source": "pilot", "cursor": '{"j": "c1"}'}])
async def test_bad_requests_name_the_field(tmp_path: Path, args: dict[str, Any]) -> None:
    answer = await call(service(tmp_path), "logs", args)
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer


async def test_tail_then_cursor_pages(tmp_path: Path) -> None:
    svc = service(tmp_path, journal=Journal(10))
    first = (await call(svc, "logs", {"lines": 3}))["result"]
    assert [x["text"] for x in first["lines"]] == ["entry 7", "entry 8", "entry 9"] and first["more"] is False
    assert (await call(svc, "logs", {"cursor": first["cursor"]}))["result"]["lines"] == []
    unknown = await call(svc, "logs", {"source": "camera"})
    assert unknown["error"]["code"] == "no_such_module"


async def test_answers_are_capped_and_continue_where_they_stopped(tmp_path: Path) -> None:
    svc = service(tmp_path, journal=Journal(1000, "{i} " + "x" * 2000))
    got: list[str] = []
    args: dict[str, Any] = {"lines": 1000}
    while True:
        answer = (await call(svc, "logs", args))["result"]
        if "retryAfterS" in answer:  # the bytes' bucket: wait (on the fake clock) and ask again
            svc.clock.now += answer["retryAfterS"]  # type: ignore[attr-defined]
            continue
        got += [x["text"].split()[0] for x in answer["lines"]]
        assert len(json.dumps(answer["lines"])) < MAX_ANSWER_BYTES * 1.1
        if not answer["more"]:
            break
        args = {"lines": 1000, "cursor": answer["cursor"]}
    assert got == [str(i) for i in range(1000)]  # every line once, in order


async def test_request_rate_is_capped(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock=clock)
    answers = [(await call(svc, "logs", {"lines": 1}))["result"] for _ in range(int(REQUEST_BURST) + 1)]
    assert all("lines" in a for a in answers[:-1]) and answers[-1] == {"retryAfterS": 0.5}
    clock.now += 0.5
    assert "lines" in (await call(svc, "logs", {"lines": 1}))["result"]


async def test_follow_waits_for_a_new_line(tmp_path: Path) -> None:
    journal = Journal(2)

    class Growing:
        def __call__(self, lines: int, since: float | None, cursor: dict[str, Any] | None) -> list[LogLine]:
            if journal.calls == 3:
                journal.entries.append(LogLine(2.0, "new", "info", position={"j": "c2"}))
            return journal(lines, since, cursor)

    svc = service(tmp_path, journal=Growing())
    cursor = (await call(svc, "logs", {}))["result"]["cursor"]
    answer = (await call(svc, "logs", {"cursor": cursor, "wait_s": 5}))["result"]
    assert [x["text"] for x in answer["lines"]] == ["new"] and journal.calls == 4
    assert svc.active == 0


async def test_follow_without_news_answers_empty_after_the_wait(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(1)

    def reading(lines: int, since: float | None, cursor: dict[str, Any] | None) -> list[LogLine]:
        clock.now += 1.0  # each poll costs a second of the fake clock
        return journal(lines, since, cursor)

    svc = service(tmp_path, journal=reading, clock=clock)
    cursor = (await call(svc, "logs", {}))["result"]["cursor"]
    answer = (await call(svc, "logs", {"cursor": cursor, "wait_s": 5}))["result"]
    assert answer["lines"] == [] and answer["cursor"] == cursor and journal.calls <= 7


async def test_known_secrets_are_redacted_in_lines(tmp_path: Path) -> None:
    svc = service(tmp_path, journal=Journal(1, "login with s3cret-planted-value and password=abc12345"),
                  secrets=lambda: ["s3cret-planted-value"])
    text = (await call(svc, "logs", {}))["result"]["lines"][0]["text"]
    assert "s3cret-planted-value" not in text and "abc12345" not in text and "[REDACTED]" in text


async def test_bundle_in_chunks(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 1000  # 256,000 bytes: 6 chunks
    clock = Clock()
    svc = service(tmp_path, make_bundle=lambda: blob, clock=clock)
    made = (await call(svc, "support_bundle", {"action": "create"}))["result"]
    assert made["bytes"] == len(blob) and made["sha256"] == hashlib.sha256(blob).hexdigest()
    assert made["chunks"] == -(-len(blob) // CHUNK_BYTES) and made["chunkBytes"] == CHUNK_BYTES
    stored = tmp_path / "diagnostics" / f"bundle-{made['id']}.tar.gz"
    assert stored.stat().st_mode & 0o777 == 0o600
    data = b""
    for index in range(made["chunks"]):
        answer = (await call(svc, "support_bundle", {"action": "read", "id": made["id"], "index": index}))["result"]
        data += base64.b64decode(answer["data"])
    assert data == blob
    past = await call(svc, "support_bundle", {"action": "read", "id": made["id"], "index": 99})
    assert past["error"]["code"] == "bad_request"
    again = (await call(svc, "support_bundle", {"action": "create"}))["result"]
    assert again == made and svc.counts["bundle.created"] == 1  # asked again soon: the same bundle
    other = await call(svc, "support_bundle", {"action": "read", "id": "0" * 16, "index": 0})
    assert other["error"]["code"] == "no_such_bundle"
    clock.now += 901
    expired = await call(svc, "support_bundle", {"action": "read", "id": made["id"], "index": 0})
    assert expired["error"]["code"] == "no_such_bundle"
    await svc.start()  # an agent start removes what a previous run left
    assert not list((tmp_path / "diagnostics").glob("bundle-*"))


async def test_bundle_bytes_are_rate_limited(tmp_path: Path) -> None:
    blob = b"\0" * (4 * 1024 * 1024)
    clock = Clock()
    svc = service(tmp_path, make_bundle=lambda: blob, clock=clock)
    made = (await call(svc, "support_bundle", {"action": "create"}))["result"]
    limited = None
    for index in range(made["chunks"]):
        answer = (await call(svc, "support_bundle", {"action": "read", "id": made["id"], "index": index}))["result"]
        if "retryAfterS" in answer:
            limited = answer
            break
        clock.now += 0.05  # the requests' own bucket refills; the bytes' one does not keep up
    assert limited is not None and 0 < limited["retryAfterS"] <= 60
