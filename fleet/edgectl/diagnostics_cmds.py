"""`edgectl logs DEVICE [agent|MODULE]` and `edgectl support-bundle DEVICE`: diagnose a device from
a desk, through the broker, with the device's `logs` and `support_bundle` commands (the command
path of docs/protocol.md; the device side is edge_agent/diagnostics/service.py).

Everything a device sends is untrusted here: answers are validated, log text has its control
characters escaped before it reaches the terminal, a bundle is checked against its announced
size and SHA-256 before it is written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from edge_shared.names import is_device_id
from edge_shared.protocol import CommandFailed, command_answer_result
from edgectl.client import FleetClient, FleetError

FOLLOW_WAIT_S = 10.0  # the device waits this long for a new line before answering empty
ANSWER_MARGIN_S = 20.0
RECONNECT_MAX_S = 15.0
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)$")

Call = Callable[[str, Mapping[str, Any], float], Awaitable[Any]]


class DiagnosticsFailure(Exception):
    """Shown to the operator as is."""


def parse_since(text: str, now: float | None = None) -> float:
    """`10m`, `2h`, `1d`, `30s` ago, or an ISO 8601 time (UTC when it has no zone) -> unix seconds."""
    now = time.time() if now is None else now
    match = DURATION.match(text.strip())
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return now - amount * {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[unit]
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise DiagnosticsFailure(f"--since {text!r}: expected a duration like 10m, 2h, 1d or a time like "
                                 "2026-12-07T10:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def safe_text(text: Any, limit: int = 16 * 1024) -> str:
    """Device text for a terminal: control characters (escape sequences, bidi overrides) shown
    as \\xNN / \\uNNNN, length capped."""
    value = text if isinstance(text, str) else str(text)
    value = value[:limit]
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                       value)


def format_line(line: Mapping[str, Any], source: str) -> tuple[str, bool]:
    """(text to print, goes to stderr)."""
    ts = line.get("ts")
    stamp = (dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
             if isinstance(ts, int | float) and 0 <= ts < 1e11 else "-")
    text = safe_text(line.get("text", ""))
    stream = safe_text(line.get("stream", ""), 16)
    if source == "agent":
        fields = "".join(f" {k.upper()}={safe_text(line[k], 200)}" for k in ("event", "module") if line.get(k))
        return f"{stamp} {stream:<7} {text}{fields}", False
    return f"{stamp} {text}", stream == "stderr"


def _page(answer: Any) -> tuple[list[Mapping[str, Any]], str, bool, float | None]:
    """(lines, cursor, more, retry after) of a logs answer; DiagnosticsFailure for a malformed one."""
    if not isinstance(answer, dict):
        raise DiagnosticsFailure(f"the device sent a malformed answer: {safe_text(answer, 200)}")
    retry = answer.get("retryAfterS")
    if retry is not None:
        if not isinstance(retry, int | float) or not 0 <= retry <= 600:
            raise DiagnosticsFailure("the device sent a malformed retryAfterS")
        return [], "", True, float(retry)
    lines, cursor, more = answer.get("lines"), answer.get("cursor"), answer.get("more")
    if not isinstance(lines, list) or not all(isinstance(x, dict) for x in lines) or not isinstance(cursor, str) \
            or not isinstance(more, bool) or len(cursor) > 4096:
        raise DiagnosticsFailure("the device sent a malformed logs answer")
    return lines, cursor, more, None


async def stream_logs(call: Call, device: str, source: str, lines: int, since: float | None, follow: bool,
                      out: TextIO, err: TextIO, wait_s: float = FOLLOW_WAIT_S) -> int:
    """Print the device's logs. `call` raises FleetError when the broker is gone (it is retried
    when following), CommandFailed when the device refuses."""
    cursor: str | None = None
    printed = 0
    backoff = 1.0
    while True:
        args: dict[str, Any] = {"source": source, "lines": lines}
        if cursor is None:
            if since is not None:
                args["since"] = since
        else:
            args["cursor"] = cursor
            if follow:
                args["wait_s"] = wait_s
        try:
            answer = await call(device, args, (wait_s if cursor is not None and follow else 0) + ANSWER_MARGIN_S)
        except FleetError as exc:
            if not follow:
                raise
            print(f"edgectl: {safe_text(str(exc), 300)}; retrying in {backoff:.0f} s", file=err, flush=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)
            continue
        backoff = 1.0
        got, new_cursor, more, retry = _page(answer)
        if retry is not None:
            await asyncio.sleep(retry)
            continue
        for line in got:
            text, to_err = format_line(line, source)
            print(text, file=err if to_err else out, flush=True)
        printed += len(got)
        cursor = new_cursor
        if not follow and (not more or printed >= lines):
            return 0


async def fetch_bundle(call: Callable[[Mapping[str, Any], float], Awaitable[Any]], dest: Path,
                       err: TextIO, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the device to make a bundle, then read it chunk by chunk (a broker hiccup is retried
    per chunk), check size and SHA-256, write it to `dest` (0600, atomically)."""
    made: Any = None
    for attempt in range(1, 6):  # the device hands out the same bundle to a create repeated soon
        try:
            made = await call({"action": "create"}, timeout)
        except FleetError as exc:
            if attempt == 5:
                raise
            print(f"edgectl: {safe_text(str(exc), 300)}; asking again", file=err, flush=True)
            await asyncio.sleep(min(2.0**attempt, RECONNECT_MAX_S))
            continue
        if isinstance(made, dict) and isinstance(made.get("retryAfterS"), int | float):
            await asyncio.sleep(min(float(made["retryAfterS"]), 60))
            continue
        break
    if not isinstance(made, dict) or not re.fullmatch(r"[0-9a-f]{16}", str(made.get("id"))):
        raise DiagnosticsFailure("the device sent a malformed bundle answer")
    size, digest, chunks = made.get("bytes"), made.get("sha256"), made.get("chunks")
    if not (isinstance(size, int) and 0 < size <= MAX_BUNDLE_BYTES and isinstance(digest, str)
            and re.fullmatch(r"[0-9a-f]{64}", digest) and isinstance(chunks, int) and 0 < chunks <= 100_000):
        raise DiagnosticsFailure(f"the device announced an unacceptable bundle (size {safe_text(size, 40)}, "
                                 f"limit {MAX_BUNDLE_BYTES})")
    print(f"edgectl: bundle {made['id']}: {size} bytes in {chunks} chunks", file=err, flush=True)
    data = bytearray()
    index = 0
    failures = 0
    while index < chunks:
        try:
            answer = await call({"action": "read", "id": made["id"], "index": index}, 60.0)
        except FleetError as exc:
            failures += 1
            if failures > 8:
                raise
            print(f"edgectl: {safe_text(str(exc), 300)}; retrying chunk {index}", file=err, flush=True)
            await asyncio.sleep(min(2.0**failures, RECONNECT_MAX_S))
            continue
        failures = 0
        if isinstance(answer, dict) and isinstance(answer.get("retryAfterS"), int | float):
            await asyncio.sleep(min(float(answer["retryAfterS"]), 60))
            continue
        if not isinstance(answer, dict) or answer.get("index") != index or not isinstance(answer.get("data"), str):
            raise DiagnosticsFailure(f"the device sent a malformed chunk {index}")
        try:
            piece = base64.b64decode(answer["data"], validate=True)
        except (binascii.Error, ValueError):
            raise DiagnosticsFailure(f"chunk {index} is not base64") from None
        data += piece
        if len(data) > size:
            raise DiagnosticsFailure(f"the device sent more than the {size} bytes it announced")
        index += 1
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise DiagnosticsFailure("the bundle does not match the size and SHA-256 the device announced")
    tmp = dest.with_name(dest.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(dest)
    return made


# --------------------------------------------------------------------------- CLI


def add_parsers(sub: Any, broker: argparse.ArgumentParser) -> None:
    logs = sub.add_parser(
        "logs", parents=[broker], help="a device's agent journal or a module's output, over the broker",
        description="Print the device agent's journal (SOURCE agent, the default) or a module's output "
        "(SOURCE = module name; its stderr on stderr). The device answers with pages capped in size and "
        "rate. --follow keeps printing new lines, through broker restarts, until Ctrl-C.",
    )
    logs.add_argument("device", help="device id")
    logs.add_argument("source", nargs="?", default="agent", help="agent (default) or a module name")
    logs.add_argument("--since", help="only lines since: a duration ago (10m, 2h, 1d) or a time (ISO 8601, UTC)")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many of the newest lines (1-1000, default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")

    bundle = sub.add_parser(
        "support-bundle", parents=[broker], help="get a support bundle (tar.gz) from a device",
        description="The device collects check and status output, its config with secrets redacted, the agent's "
        "journal, module logs, versions, the state database's summary, health and podman info into a tar.gz and "
        "sends it over the broker in chunks; it is checked against its SHA-256 and written to --output.",
    )
    bundle.add_argument("device", help="device id")
    bundle.add_argument("-o", "--output", type=Path, help="file to write (default support-DEVICE-TIME.tar.gz)")
    bundle.add_argument("--timeout", type=float, default=120.0, help="seconds for the device to make it (120)")


async def _unless_closed(client: FleetClient, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """The call's answer; FleetError as soon as the broker connection drops."""
    task = asyncio.ensure_future(call)
    closed = asyncio.ensure_future(client.wait_closed())
    try:
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if not task.done():
        task.cancel()
        raise FleetError("lost the broker connection")
    return task.result()


def _caller(args: argparse.Namespace, command: str) -> Callable[..., Awaitable[Any]]:
    """A command call on one fleet connection, made again after it broke (a broker restart)."""
    from edgectl.connect import fleet_client

    state: dict[str, FleetClient] = {}

    async def call(device: str, payload: Mapping[str, Any], timeout: float) -> Any:
        import aiomqtt

        client = state.get("client")
        try:
            if client is None:
                client = fleet_client(args)
                await client.__aenter__()
                state["client"] = client
            answer = await _unless_closed(client, client.call(device, command, dict(payload), timeout=timeout))
        except (aiomqtt.MqttError, OSError, FleetError) as exc:
            state.pop("client", None)
            if client is not None:
                await client.__aexit__(None, None, None)
            raise FleetError(str(exc) or type(exc).__name__) from None
        return command_answer_result(answer)

    async def close() -> None:
        if "client" in state:
            await state.pop("client").__aexit__(None, None, None)

    call.close = close  # type: ignore[attr-defined]
    return call


def cmd_logs(args: argparse.Namespace) -> int:
    if not is_device_id(args.device):
        print(f"edgectl: device id {args.device!r} is not valid", file=sys.stderr)
        return 2
    if not 1 <= args.lines <= 1000:
        print("edgectl: --lines must be 1-1000", file=sys.stderr)
        return 2
    call = _caller(args, "logs")

    async def run() -> int:
        try:
            return await stream_logs(lambda d, a, t: call(d, a, t), args.device, args.source, args.lines,
                                     parse_since(args.since) if args.since else None, args.follow,
                                     sys.stdout, sys.stderr)
        finally:
            await call.close()  # type: ignore[attr-defined]

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except (DiagnosticsFailure, FleetError) as exc:
        print(f"edgectl: logs of {args.device}: {exc}", file=sys.stderr)
        return 1
    except CommandFailed as exc:
        print(f"edgectl: {args.device} refused: {exc.code}: {safe_text(exc.description, 500)}", file=sys.stderr)
        return 1


def cmd_support_bundle(args: argparse.Namespace) -> int:
    if not is_device_id(args.device):
        print(f"edgectl: device id {args.device!r} is not valid", file=sys.stderr)
        return 2
    dest = args.output or Path(f"support-{args.device}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz")
    call = _caller(args, "support_bundle")

    async def run() -> dict[str, Any]:
        try:
            return await fetch_bundle(lambda a, t: call(args.device, a, t), dest, sys.stderr, args.timeout)
        finally:
            await call.close()  # type: ignore[attr-defined]

    try:
        made = asyncio.run(run())
    except (DiagnosticsFailure, FleetError, OSError) as exc:
        print(f"edgectl: support bundle of {args.device}: {exc}", file=sys.stderr)
        return 1
    except CommandFailed as exc:
        print(f"edgectl: {args.device} refused: {exc.code}: {safe_text(exc.description, 500)}", file=sys.stderr)
        return 1
    print(f"wrote {dest} ({made['bytes']} bytes, sha256 {made['sha256']})")
    return 0


COMMANDS = {"logs": cmd_logs, "support-bundle": cmd_support_bundle}
