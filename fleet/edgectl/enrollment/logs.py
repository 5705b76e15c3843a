"""The enrollment service's log: one event per line on stderr, which journald keeps under the
unit (`journalctl -u edgectl-enroll`): `LEVEL message  [EVENT=enrollment.issue DEVICE=rover-17]`."""

from __future__ import annotations

import logging
import sys

FIELDS = ("EVENT", "DEVICE")


class EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name))
        line = f"{record.levelname:<7} {record.getMessage()}" + (f"  [{fields}]" if fields else "")
        return line.replace("\n", " ")  # one event, one line


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
