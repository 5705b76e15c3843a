"""Pure parts of remote logs: journal entries and podman log lines as LogLines, cursors (where the
next page starts), the byte and line caps of one answer.

A cursor is an opaque string for the fleet side (compact JSON here):
- the agent's journal: {"j": journald's __CURSOR} or {"since": unix seconds | null} before the
  first line was seen;
- a module: {"ts": podman's RFC 3339 timestamp of the last line sent, "skip": how many lines with
  exactly that timestamp were sent}, or {"ts": null} (from the container's first line). podman's
  `since` includes lines at that time, so `skip` makes the next page start exactly after the last
  line, with no line lost or repeated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_LINE_BYTES = 8 * 1024  # one line longer than this is cut (and says so)
LINE_OVERHEAD = 48  # JSON keys and quotes of one line in the answer, counted against the cap
MAX_CURSOR_CHARS = 4096
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ?")


@dataclass(frozen=True)
class LogLine:
    ts: float | None  # unix seconds
    text: str
    stream: str  # "stdout" / "stderr" for a module, the syslog priority name for the journal
    event: str | None = None
    module: str | None = None
    position: Any = None  # what the cursor after this line holds (not sent)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": self.ts, "text": self.text, "stream": self.stream}
        if self.event:
            out["event"] = self.event
        if self.module:
            out["module"] = self.module
        return out

    def cost(self) -> int:
        return len(self.text.encode()) + LINE_OVERHEAD + len(self.event or "") + len(self.module or "")


def cut_line(text: str) -> str:
    raw = text.encode()
    if len(raw) <= MAX_LINE_BYTES:
        return text
    return raw[:MAX_LINE_BYTES].decode("utf-8", "ignore") + f" [... {len(raw) - MAX_LINE_BYTES} more bytes cut]"


# --------------------------------------------------------------------------- journal

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def _field_text(value: Any) -> str:
    """journalctl -o json gives a binary field as a list of byte values."""
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def journal_line(entry: Mapping[str, Any]) -> LogLine | None:
    """One `journalctl -o json` entry; None when it has no cursor (not a journal entry)."""
    cursor = entry.get("__CURSOR")
    if not isinstance(cursor, str):
        return None
    try:
        ts: float | None = int(entry.get("__REALTIME_TIMESTAMP", "")) / 1e6
    except (TypeError, ValueError):
        ts = None
    try:
        priority = PRIORITIES[int(entry.get("PRIORITY", 6))]
    except (TypeError, ValueError, IndexError):
        priority = "info"
    return LogLine(ts, cut_line(_field_text(entry.get("MESSAGE"))), priority,
                   _field_text(entry.get("EVENT")) or None, _field_text(entry.get("MODULE")) or None,
                   position={"j": cursor})


def parse_journal_output(text: str) -> list[LogLine]:
    out = []
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and (line := journal_line(entry)) is not None:
            out.append(line)
    return out


# --------------------------------------------------------------------------- podman


def timestamp_ns(text: str) -> int | None:
    """podman's RFC 3339 timestamp (nanoseconds, trailing zeros trimmed) as integer nanoseconds."""
    match = TIMESTAMP.match(text)
    if not match:
        return None
    whole, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def podman_line(stream: str, raw: bytes) -> LogLine:
    """One line of podman logs with timestamps=true: "2026-12-07T01:16:35.5458Z text"."""
    text = raw.decode("utf-8", "replace").rstrip("\r")
    match = TIMESTAMP.match(text)
    if not match:
        return LogLine(None, cut_line(text), stream, position={"ts": None})
    stamp = match.group(0).strip()
    ns = timestamp_ns(stamp)
    return LogLine(ns / 1e9 if ns is not None else None, cut_line(text[match.end():]), stream,
                   position={"ts": stamp})


def after_podman_cursor(lines: Iterable[LogLine], cursor: Mapping[str, Any]) -> Iterator[LogLine]:
    """The lines after the cursor's position (all of them for {"ts": null}), each carrying the
    cursor that follows it. Lines come in time order, so equal timestamps are neighbours; `skip`
    counts them from the first line with that time podman sent."""
    last = cursor.get("ts")
    last_ns = timestamp_ns(last) if isinstance(last, str) else None
    skip = cursor.get("skip", 0)
    previous: int | None = None
    run = 0
    for line in lines:
        stamp = line.position.get("ts") if isinstance(line.position, dict) else None
        ns = timestamp_ns(stamp) if isinstance(stamp, str) else None
        run = run + 1 if ns is not None and ns == previous else 1
        previous = ns
        if last_ns is not None and ns is not None and (ns < last_ns or (ns == last_ns and run <= skip)):
            continue
        yield LogLine(line.ts, line.text, line.stream, position={"ts": stamp, "skip": run})


# --------------------------------------------------------------------------- cursors and caps


def encode_cursor(position: Mapping[str, Any]) -> str:
    return json.dumps(dict(position), separators=(",", ":"), sort_keys=True)


def decode_cursor(text: str) -> dict[str, Any]:
    """ValueError for anything that is not a cursor this device made."""
    if len(text) > MAX_CURSOR_CHARS:
        raise ValueError("cursor is too long")
    doc = json.loads(text)
    if not isinstance(doc, dict) or not doc:
        raise ValueError("cursor is not an object")
    if "j" in doc:
        if set(doc) != {"j"} or not isinstance(doc["j"], str) or not doc["j"]:
            raise ValueError("bad journal cursor")
    elif "since" in doc:
        if set(doc) != {"since"} or not (doc["since"] is None or isinstance(doc["since"], int | float)):
            raise ValueError("bad journal cursor")
    elif "ts" in doc:
        if not set(doc) <= {"ts", "skip"} or not (doc["ts"] is None or timestamp_ns(str(doc["ts"])) is not None):
            raise ValueError("bad module cursor")
        if not isinstance(doc.get("skip", 0), int) or isinstance(doc.get("skip", 0), bool) or doc.get("skip", 0) < 0:
            raise ValueError("bad module cursor")
    else:
        raise ValueError("unknown cursor")
    return doc


@dataclass(frozen=True)
class Page:
    lines: list[LogLine]
    cursor: str
    more: bool  # lines were left out by a cap: ask again with the cursor


def cap_page(lines: Sequence[LogLine], start: Mapping[str, Any], max_lines: int, max_bytes: int) -> Page:
    """The first lines that fit both caps; the cursor after the last one kept (or `start` when
    none is kept)."""
    kept: list[LogLine] = []
    used = 0
    for line in lines:
        if kept and (len(kept) >= max_lines or used + line.cost() > max_bytes):
            break  # (the first line is always kept: a page makes progress; lines are cut to fit)
        kept.append(line)
        used += line.cost()
    position = kept[-1].position if kept else start
    return Page(kept, encode_cursor(position), len(kept) < len(lines))
