"""The device identity as text (pure): the `edge-agent status` line and the `edgectl devices`
CERT EXPIRES cell, from the reported `identity` section."""

from __future__ import annotations

import datetime as dt
from typing import Any

STATE_WORDS = {
    "valid": "valid",
    "renewing": "renewing",
    "enrolling": "enrolling",
    "pending": "waiting for approval",
    "refused": "REFUSED",
    "error": "ERROR",
    "clock-unsynchronised": "clock not synchronised",
    "starting": "starting",
}


def identity_lines(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return []
    state = STATE_WORDS.get(str(section.get("state")), str(section.get("state")))
    head = f"identity    {section.get('subject', '(no certificate yet)')}: {state}"
    if section.get("notAfter"):
        head += f", expires {_short(section['notAfter'])}, renews at {_short(section.get('renewAt'))}"
    lines = [head]
    detail = [f"{section.get('renewals', 0)} renewals", f"key {section.get('keyStorage') or '?'}"]
    if section.get("clock") and section["clock"] != "synchronised":
        detail.append(str(section["clock"]))
    if section.get("state") not in ("valid",) and section.get("detail"):
        detail.append(str(section["detail"]))
    lines.append("            " + "; ".join(detail))
    return lines


def expiry_cell(section: Any, now: float) -> str:
    """Time left on the device certificate, with a mark when it is not renewing as it should."""
    if not isinstance(section, dict) or not section.get("notAfter"):
        return "-" if not isinstance(section, dict) else str(section.get("state", "-"))
    try:
        left = dt.datetime.fromisoformat(section["notAfter"]).timestamp() - now
    except (TypeError, ValueError):
        return "?"
    if left <= 0:
        return "EXPIRED"
    text = (f"{left / 86400:.0f}d" if left >= 2 * 86400 else f"{left / 3600:.0f}h" if left >= 7200
            else f"{left / 60:.0f}m" if left >= 120 else f"{left:.0f}s")
    state = section.get("state")
    return text if state in ("valid", "renewing") else f"{text} ({STATE_WORDS.get(str(state), state)})"


def _short(value: Any) -> str:
    try:
        return dt.datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return str(value)
