"""Logging: one event per line, with journald fields when running under systemd.

Callers use plain stdlib logging and pass journal fields as upper-case ``extra`` keys:

    log.info("desired document accepted", extra={"EVENT": "desired.accepted", "DEPLOYMENT": "7"})

so that ``journalctl -u edge-agent EVENT=desired.accepted`` and ``MODULE=pilot`` work.

The journal handler speaks journald's native datagram protocol directly (documented in
systemd's "Native Journal Protocol"); python-systemd would need libsystemd headers and a
compiler on the device for about forty lines of socket code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import sys
import time
import traceback
from typing import Any, Literal

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_FIELD_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")
_MAX_VALUE = 64 * 1024  # keep datagrams well under the socket's limit; longer values are cut
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

LogFormat = Literal["auto", "text", "json", "journal"]


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The upper-case extra fields of a record (EVENT, MODULE, DEPLOYMENT, ...)."""
    return {key: str(value) for key, value in record.__dict__.items() if _FIELD_NAME.match(key) and value is not None}


def _priority(levelno: int) -> int:
    for level, prio in sorted(_SYSLOG_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of the exception that caused it all. An ExceptionGroup (what a TaskGroup
    raises) says only "unhandled errors in a TaskGroup"; it is unwrapped to its leaf exceptions."""
    leaves = list(_leaves(exc))
    text = "; ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__ for e in leaves[:3])
    if len(leaves) > 3:
        text += f"; and {len(leaves) - 3} more"
    return text


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out or [exc]
    return [exc]


def _exc_info(record: logging.LogRecord) -> BaseException | None:
    if record.exc_info and record.exc_info[1] is not None:
        return record.exc_info[1]
    return None


def _message(record: logging.LogRecord) -> str:
    """The one-line message: the text, then the real cause of an attached exception."""
    msg = record.getMessage()
    exc = _exc_info(record)
    if exc is not None:
        cause = describe_exception(exc)
        if cause not in msg:
            msg = f"{msg}: {cause}"
    return msg


def format_traceback(record: logging.LogRecord) -> str | None:
    """The full traceback of the record's exception (ExceptionGroups with every sub-exception)."""
    exc = _exc_info(record)
    if exc is None:
        return None
    if record.exc_text is None:
        record.exc_text = "".join(traceback.format_exception(exc)).rstrip("\n")
    return record.exc_text


def journal_problem(path: str = JOURNAL_SOCKET) -> str | None:
    """Why journald cannot take entries at `path` (None when it can): the socket is connected to
    once, as the handler would send to it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(path)
    except OSError as exc:
        return f"no journald socket at {path} ({exc.strerror or exc})"
    finally:
        sock.close()
    return None


class JournalHandler(logging.Handler):
    """Sends each record to journald as one entry with native fields. A record journald does not
    take (its socket gone, a restart of systemd-journald) is written to stderr instead, as a text
    line: a message is never lost to a "Logging error"."""

    def __init__(self, identifier: str = "edge-agent", path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = _message(record)
            trace = format_traceback(record)
            fields = {
                # journalctl shows MESSAGE: the traceback is in it (and in TRACEBACK for matching).
                "MESSAGE": f"{message}\n{trace}" if trace else message,
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            if trace:
                exc = _exc_info(record)
                assert exc is not None
                fields["TRACEBACK"] = trace
                fields["EXCEPTION"] = describe_exception(exc)
            fields.update(journal_fields(record))
            entry = encode_journal_entry(fields)
        except Exception:  # logging must never take the agent down
            self.handleError(record)
            return
        try:
            self.sock.sendto(entry, self.path)
        except OSError:
            self.fallback.handle(record)

    def close(self) -> None:
        self.sock.close()
        self.fallback.close()
        super().close()


def encode_journal_entry(fields: dict[str, str]) -> bytes:
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")[:_MAX_VALUE]
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class TextFormatter(logging.Formatter):
    """Readable single lines for a terminal: time, level, logger, message, then FIELD=value."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extras = " ".join(f"{k}={v}" for k, v in journal_fields(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name.removeprefix('edge_agent.'):<18} {_message(record)}"
        if extras:
            text += f"  [{extras}]"
        text = text.replace("\n", "\\n")
        trace = format_traceback(record)
        if trace:
            # The event stays one line; its traceback follows, indented, for the reader.
            text += "\n" + "\n".join("    " + line for line in trace.splitlines())
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        trace = format_traceback(record)
        if trace:
            doc["traceback"] = trace
        doc.update(journal_fields(record))
        return json.dumps(doc, ensure_ascii=False)


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream or not os.path.exists(JOURNAL_SOCKET):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def setup_logging(level: str = "info", fmt: LogFormat = "auto", journal_socket: str = JOURNAL_SOCKET) -> str | None:
    """Install the one log handler. With format "journal" and no journald to take entries, the
    agent logs text to stderr instead, says so once (a warning, also returned), and goes on."""
    chosen = fmt
    if fmt == "auto":
        chosen = "journal" if under_journald() else "text"
    fallback = None
    if chosen == "journal":
        problem = journal_problem(journal_socket)
        if problem is not None:
            fallback = f"logging.format = \"journal\" but {problem}: logging text to stderr instead"
            chosen = "text"
    handler: logging.Handler
    if chosen == "journal":
        handler = JournalHandler(path=journal_socket)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries are chatty at debug; keep them one notch quieter than ours.
    for noisy in ("urllib3", "asyncio", "paho", "aiomqtt"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    if fallback is not None:
        get_logger(__name__).warning("%s", fallback, extra={"EVENT": "logging.journal_unavailable"})
    return fallback
