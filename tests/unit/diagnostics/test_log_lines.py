"""Remote logs, pure parts: journal entries, podman timestamps, cursors that neither lose nor repeat
a line, the caps of one answer, the token bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.diagnostics.log_lines import (
    MAX_LINE_BYTES,
    LogLine,
    after_podman_cursor,
    cap_page,
    decode_cursor,
    encode_cursor,
    journal_line,
    parse_journal_output,
    podman_line,
    timestamp_ns,
)
from edge_agent.diagnostics.rate import TokenBucket


def test_journal_entries() -> None:
    entry = {"__CURSOR": "s=1;i=2", "__REALTIME_TIMESTAMP": "1796606188323310", "MESSAGE": "started",
             "PRIORITY": "4", "EVENT": "agent.started", "MODULE": "pilot"}
    line = journal_line(entry)
    assert line is not None
    assert line.wire() == {"ts": 1796606188.32331, "text": "started", "stream": "warning",
                           "event": "agent.started", "module": "pilot"}
    assert line.position == {"j": "s=1;i=2"}
    binary = journal_line({"__CURSOR": "c", "MESSAGE": list(b"bytes \xff here")})
    assert binary is not None and binary.text == "bytes \ufffd here" and binary.stream == "info"
    assert journal_line({"MESSAGE": "no cursor"}) is None
    text = json.dumps(entry) + "\nnot json\n" + json.dumps({"__CURSOR": "d", "MESSAGE": "x" * (MAX_LINE_BYTES + 5)})
    parsed = parse_journal_output(text)
    assert [p.position for p in parsed] == [{"j": "s=1;i=2"}, {"j": "d"}]
    assert parsed[1].text.endswith("[... 5 more bytes cut]")


def test_podman_timestamps() -> None:
    assert timestamp_ns("2026-12-07T01:16:35.5458Z") == timestamp_ns("2026-12-07T01:16:35.545800000Z")
    assert timestamp_ns("2026-12-07T02:16:35.000000001+01:00") == timestamp_ns("2026-12-07T01:16:35.000000001Z")
    assert timestamp_ns("2026-12-07T01:16:35Z") == 1796606195 * 10**9
    assert timestamp_ns("yesterday") is None
    line = podman_line("stderr", b"2026-12-07T01:16:35.5458Z oops\r")
    assert (line.text, line.stream, line.position) == ("oops", "stderr", {"ts": "2026-12-07T01:16:35.5458Z"})
    assert line.ts == pytest.approx(1796606195.5458)


def lines_at(*stamps: str) -> list[LogLine]:
    return [podman_line("stdout", f"{s} line-{i}".encode()) for i, s in enumerate(stamps)]


def test_podman_cursor_neither_loses_nor_repeats() -> None:
    a, b, c = "2026-12-07T01:00:00.1Z", "2026-12-07T01:00:00.2Z", "2026-12-07T01:00:00.3Z"
    every = lines_at(a, b, b, b, c)
    first = list(after_podman_cursor(every, {"ts": None}))
    assert [x.position for x in first] == [{"ts": a, "skip": 1}, {"ts": b, "skip": 1}, {"ts": b, "skip": 2},
                                           {"ts": b, "skip": 3}, {"ts": c, "skip": 1}]
    # A page that ended after the second line at time b; podman's `since=b` sends b, b, b, c again.
    page = cap_page(first, {"ts": None}, max_lines=3, max_bytes=10_000)
    assert [x.text for x in page.lines] == ["line-0", "line-1", "line-2"] and page.more
    cursor = decode_cursor(page.cursor)
    again = list(after_podman_cursor(lines_at(b, b, b, c), cursor))
    assert [x.text for x in again] == ["line-2", "line-3"]  # renumbered from `since`: texts below
    assert [x.position for x in again] == [{"ts": b, "skip": 3}, {"ts": c, "skip": 1}]


def test_caps_keep_whole_lines_and_always_make_progress() -> None:
    lines = lines_at(*[f"2026-12-07T01:00:0{i}Z" for i in range(5)])
    one = lines[0].cost()
    page = cap_page(list(after_podman_cursor(lines, {"ts": None})), {"ts": None}, 100, one * 2 + 1)
    assert len(page.lines) == 2 and page.more
    tiny = cap_page(list(after_podman_cursor(lines, {"ts": None})), {"ts": None}, 100, 1)
    assert len(tiny.lines) == 1  # the first line always goes (lines are cut to 8 KiB)
    empty = cap_page([], {"since": 5.0}, 100, 1000)
    assert (empty.lines, decode_cursor(empty.cursor), empty.more) == ([], {"since": 5.0}, False)


@pytest.mark.parametrize("text", ['[]', '{}', '{"j": 5}', '{"j": "a", "x": 1}', '{"ts": "nope"}',
                                  '{"ts": null, "skip": -1}', '{"ts": null, "skip": true}', '{"since": "x"}',
                                  '{"other": 1}', "x" * 5000, "not json"])
def test_foreign_cursors_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(text)


def test_cursor_round_trip() -> None:
    for position in ({"j": "s=abc;i=1"}, {"since": None}, {"since": 12.5}, {"ts": None},
                     {"ts": "2026-12-07T01:00:00.1Z", "skip": 3}):
        assert decode_cursor(encode_cursor(position)) == position


def test_token_bucket() -> None:
    bucket = TokenBucket(capacity=10, refill_per_s=2)
    assert bucket.take(10, now=0.0) and not bucket.take(1, now=0.0)
    assert bucket.wait_s(4, now=0.0) == 2.0
    assert bucket.take(4, now=2.0) and not bucket.take(1, now=2.0)
    assert bucket.available(now=100.0) == 10  # never above capacity
    assert bucket.available(now=50.0) == 10  # a clock that goes back adds nothing


def test_journalctl_arguments_for_a_tail_a_cursor_and_a_since(tmp_path: Path) -> None:
    """read_journal's three readings, against a stand-in journalctl that records its arguments
    and prints five entries (the real one runs in tests/integration/diagnostics)."""
    from edge_agent.diagnostics.log_sources import SourceUnavailable, read_journal

    args_file = tmp_path / "args"
    tool = tmp_path / "journalctl"
    entries = "\n".join(json.dumps({"__CURSOR": f"c{i}", "MESSAGE": f"m{i}"}) for i in range(5))
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {args_file}\ncat <<'EOF'\n{entries}\nEOF\n")
    tool.chmod(0o755)
    assert [x.text for x in read_journal(3, None, None, journalctl=str(tool))] == [f"m{i}" for i in range(5)]
    got = read_journal(2, None, {"j": "c1"}, journalctl=str(tool))
    assert [x.text for x in got] == ["m0", "m1"]  # oldest first, reading stops at the page
    read_journal(2, None, {"since": 12.5}, journalctl=str(tool))
    calls = args_file.read_text().splitlines()
    assert "--lines=3" in calls[0] and "--after-cursor" not in calls[0]
    assert "--after-cursor=c1" in calls[1] and "--lines" not in calls[1]
    assert "--since=@12.500000" in calls[2] and "--lines" not in calls[2]
    assert all("_SYSTEMD_UNIT=edge-agent.service + SYSLOG_IDENTIFIER=edge-agent" in c for c in calls)
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'No journal files were found.' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(SourceUnavailable, match="No journal files were found"):
        read_journal(3, None, None, journalctl=str(broken))
