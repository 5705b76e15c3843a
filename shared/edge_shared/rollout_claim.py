"""Which rollout a signed desired document belongs to: the claim both sides agree on. Pure.

A document published by `edgectl rollout` carries, inside its signed payload,

    "meta": {"rollout": {"id": "3fa2c1d0", "until": "2026-12-07T03:10:00Z", "forced": false}}

`id` names the rollout, `until` is its lease on the device (after it the claim no longer holds the
device, so a rollout whose edgectl died cannot block it forever), `forced` says the operator chose
to take the device from whatever rollout held it (`--force`). The claim lives in `meta` because
agents older than the rule accept any `meta` (they ignore it), so a rollout still reaches them.
The device's rule over claims is edge_agent/desired/rollout_guard.py; the fleet reads the same
claim back from the retained document to refuse a second rollout before it publishes anything.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge_shared.document import DesiredRejected

REFUSAL_CODE = "rollout_in_flight"
INVALID_CODE = "invalid_rollout"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_ID = 64


@dataclass(frozen=True)
class RolloutClaim:
    id: str
    until: float  # unix time the lease ends
    forced: bool = False

    def holds(self, now: float) -> bool:
        return now < self.until

    def until_text(self) -> str:
        return format_time(self.until)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "until": self.until_text(), "forced": self.forced}


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone (write e.g. 2026-01-31T12:00:00Z)")
    return parsed.timestamp()


def claim_of(meta: Mapping[str, Any] | None) -> RolloutClaim | None:
    """The claim in a document's `meta` (None when it names no rollout). Raises DesiredRejected
    (invalid_rollout) naming the field when `meta.rollout` is an object of the wrong shape. A bare
    string (what edgectl wrote before the claim existed) is a label only: no claim."""
    if not isinstance(meta, Mapping):
        return None
    value = meta.get("rollout")
    if value is None or isinstance(value, str):
        return None
    if not isinstance(value, Mapping):
        raise DesiredRejected(INVALID_CODE, "payload.meta.rollout: expected an object {id, until, forced}")
    extra = sorted(set(value) - {"id", "until", "forced"})
    if extra:
        raise DesiredRejected(INVALID_CODE, f"payload.meta.rollout: unknown field {extra[0]!r}")
    rid, until, forced = value.get("id"), value.get("until"), value.get("forced", False)
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID or not set(rid) <= _ID_CHARS:
        raise DesiredRejected(
            INVALID_CODE, f"payload.meta.rollout.id: expected 1-{MAX_ID} characters of A-Z a-z 0-9 . _ -"
        )
    if not isinstance(until, str):
        raise DesiredRejected(INVALID_CODE, "payload.meta.rollout.until: expected an RFC 3339 time string")
    try:
        until_ts = _parse_time(until)
    except ValueError as exc:
        raise DesiredRejected(INVALID_CODE, f"payload.meta.rollout.until: {until[:40]!r}: {exc}") from None
    if not isinstance(forced, bool):
        raise DesiredRejected(INVALID_CODE, "payload.meta.rollout.forced: expected true or false")
    return RolloutClaim(rid, until_ts, forced)


def claim_of_payload(payload: Mapping[str, Any] | None) -> RolloutClaim | None:
    """The claim of a parsed document payload (the object with schema, version, deployment, meta)."""
    if not isinstance(payload, Mapping):
        return None
    return claim_of(payload.get("meta") if isinstance(payload.get("meta"), Mapping) else None)


def claim_of_envelope(raw: bytes | None) -> RolloutClaim | None:
    """The claim of a stored or retained document, as bytes, WITHOUT checking its signature: for
    bytes that already passed the gate (the device's accepted document) or for display (the fleet's
    view of the retained document). None when the bytes hold no readable claim."""
    if not raw:
        return None
    try:
        outer = json.loads(raw)
        if isinstance(outer, dict) and isinstance(outer.get("payload"), str):
            outer = json.loads(base64.b64decode(outer["payload"], validate=True))
        return claim_of_payload(outer)
    except (ValueError, binascii.Error, DesiredRejected, RecursionError):
        return None
