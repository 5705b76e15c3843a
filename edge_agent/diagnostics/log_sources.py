"""Where remote logs come from (blocking; run off the event loop): the agent's own journal
(`journalctl`) and a module container's output (the podman API, as `edge-agent logs` reads it).

Both read at most what one page needs and stop reading then (journalctl is terminated, the podman
answer closed), so a large journal or log costs the device one page, not the whole file.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from edge_agent.api_url import podman_client, transport_reason
from edge_agent.diagnostics.log_lines import LogLine, after_podman_cursor, journal_line, podman_line
from edge_agent.runtime.module_logs import STDERR, LogFrameDecoder, LogsError, NoSuchModule, find_module_container

# The agent's journal entries: under systemd (its unit) and when started by hand with
# logging.format = "journal" (its identifier).
JOURNAL_MATCHES = ("_SYSTEMD_UNIT=edge-agent.service", "+", "SYSLOG_IDENTIFIER=edge-agent")
JOURNAL_TIMEOUT_S = 20.0
PODMAN_TIMEOUT_S = 20.0


class SourceUnavailable(Exception):
    """The source cannot be read; the message says why (sent to the fleet as is)."""


class NoSuchSource(SourceUnavailable):
    pass


def read_journal(lines: int, since: float | None, cursor: dict[str, Any] | None,
                 journalctl: str = "journalctl") -> list[LogLine]:
    """Without a journal cursor: the last `lines` entries (since `since`). With one: up to `lines`
    entries after it, oldest first."""
    exe = shutil.which(journalctl)
    if exe is None:
        raise SourceUnavailable("journalctl is not installed on this device")
    argv = [exe, "--no-pager", "-o", "json", "-q"]
    # With a cursor: the entries after it, oldest first, the first `lines` of them (reading stops
    # there). Without: the newest `lines`.
    oldest_first = cursor is not None
    after = cursor.get("j") if cursor else None
    start = cursor.get("since") if cursor else since
    if after:
        argv.append(f"--after-cursor={after}")
    elif start is not None:
        argv.append(f"--since=@{float(start):.6f}")
    if not oldest_first:
        argv.append(f"--lines={lines}")
    argv.extend(JOURNAL_MATCHES)
    out: list[LogLine] = []
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise SourceUnavailable(f"cannot run journalctl: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for raw in proc.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and (line := journal_line(entry)) is not None:
                out.append(line)
                if oldest_first and len(out) >= lines:
                    break
    finally:
        if proc.poll() is None and oldest_first and len(out) >= lines:
            proc.terminate()
        try:
            proc.wait(JOURNAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        error = proc.stderr.read().decode("utf-8", "replace").strip()
        proc.stdout.close()
        proc.stderr.close()
    if proc.returncode not in (0, -15) and not out:
        raise SourceUnavailable(f"journalctl failed: {error[:300] or f'exit {proc.returncode}'}")
    return out


def _podman_lines(resp: Any) -> Iterator[LogLine]:
    decoder = LogFrameDecoder()
    partial = {1: b"", 2: b""}
    for data in resp.iter_content(chunk_size=None):
        for stream, piece in decoder.feed(data):
            buf = partial.get(stream, b"") + piece
            *complete, partial[stream] = buf.split(b"\n")
            for raw in complete:
                yield podman_line("stderr" if stream == STDERR else "stdout", raw)
    for stream, rest in partial.items():
        if rest:
            yield podman_line("stderr" if stream == STDERR else "stdout", rest)


def read_module(url: str, device_id: str, module: str, lines: int, since: float | None,
                cursor: dict[str, Any] | None) -> list[LogLine]:
    """Without a cursor: the last `lines` lines (since `since`). With one: up to `lines` lines
    after it, oldest first."""
    try:
        client = podman_client(url, timeout=PODMAN_TIMEOUT_S)
    except ValueError as exc:
        raise SourceUnavailable(str(exc)) from None
    params: dict[str, str] = {"stdout": "true", "stderr": "true", "follow": "false", "timestamps": "true"}
    if cursor is not None:
        if cursor.get("ts"):
            params["since"] = str(cursor["ts"])
    else:
        params["tail"] = str(lines)
        if since is not None:
            params["since"] = dt.datetime.fromtimestamp(since, dt.UTC).isoformat().replace("+00:00", "Z")
    try:
        with client:
            try:
                container = find_module_container(client, device_id, module)
            except NoSuchModule as exc:
                raise NoSuchSource(str(exc)) from None
            resp = client.api.get(f"/containers/{container}/logs", params=params, stream=True,
                                  timeout=(PODMAN_TIMEOUT_S, PODMAN_TIMEOUT_S))
            try:
                if resp.status_code != 200:
                    raise SourceUnavailable(f"podman: logs of module {module}: HTTP {resp.status_code}")
                found = after_podman_cursor(_podman_lines(resp), cursor or {"ts": None})
                # After a cursor: stop reading at one page. A tail is what podman sent.
                got = list(itertools.islice(found, lines) if cursor is not None else found)
            finally:
                resp.close()
            if cursor is None and got and isinstance(got[0].position, dict) and got[0].position.get("ts"):
                got = _tail_with_whole_runs(client, container, params, got)
    except SourceUnavailable:
        raise
    except LogsError as exc:
        raise SourceUnavailable(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise SourceUnavailable(f"podman at {url}: {transport_reason(exc)}") from None
    return got


def _tail_with_whole_runs(client: Any, container: str, params: dict[str, str], tail: list[LogLine]) -> list[LogLine]:
    """The tail again, read from its first line's time: lines written in one go share a timestamp,
    and a tail can start inside such a run. A line's position counts the lines of its run from
    the run's first one, so it must see the whole run (else the next page, read from that time,
    repeats lines the tail already sent)."""
    first = tail[0].position["ts"]
    again = {k: v for k, v in params.items() if k != "tail"}
    again["since"] = str(first)
    resp = client.api.get(f"/containers/{container}/logs", params=again, stream=True,
                          timeout=(PODMAN_TIMEOUT_S, PODMAN_TIMEOUT_S))
    try:
        if resp.status_code != 200:
            return tail
        whole = list(after_podman_cursor(_podman_lines(resp), {"ts": None}))
    finally:
        resp.close()
    return whole[-len(tail):] if whole else tail
