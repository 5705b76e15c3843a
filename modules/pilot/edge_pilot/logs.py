"""Logging helpers: one event per line, journald-style fields in ``extra``.

The agent's own ``edge_agent.logs`` is not installed inside the module image, so the module
uses stdlib logging with the same field names (MODULE, EVENT)."""

from __future__ import annotations

import logging
import sys
from typing import Any

MODULE = "pilot"


class _FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        event = getattr(record, "EVENT", None)
        reason = getattr(record, "REASON", None)
        parts = [base]
        if event:
            parts.append(f"event={event}")
        if reason:
            parts.append(f"reason={reason}")
        return " ".join(parts).replace("\n", " | ")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_edge_pilot", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._edge_pilot = True  # type: ignore[attr-defined]
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def fields(event: str, **more: Any) -> dict[str, Any]:
    """``extra=`` dict for a log call: journald fields MODULE and EVENT plus any others."""
    out: dict[str, Any] = {"MODULE": MODULE, "EVENT": event}
    out.update({k.upper(): v for k, v in more.items()})
    return out
