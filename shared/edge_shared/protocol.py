"""The MQTT topic tree and message envelopes shared by the device (twin session) and the fleet
(edgectl). docs/protocol.md is the prose version of this file; keep them in step.

Everything here is pure: topic strings, JSON envelopes, no I/O.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
FLEET_SEGMENT = "fleet"  # P/fleet/... is reserved for fleet-side clients (response topics)
PRESENCE_ONLINE = "online"
PRESENCE_OFFLINE = "offline"


@dataclass(frozen=True)
class DeviceTopics:
    """Topics of one device under prefix P and device id D."""

    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def desired(self) -> str:
        return f"{self.base}/desired"

    @property
    def reported(self) -> str:
        return f"{self.base}/reported"

    @property
    def presence(self) -> str:
        return f"{self.base}/presence"

    @property
    def commands_filter(self) -> str:
        return f"{self.base}/commands/+"

    def command(self, name: str) -> str:
        return f"{self.base}/commands/{name}"

    def command_name(self, topic: str) -> str | None:
        """The command name of a topic under commands/, or None for any other topic."""
        head = f"{self.base}/commands/"
        if topic.startswith(head) and "/" not in topic[len(head) :] and len(topic) > len(head):
            return topic[len(head) :]
        return None

    def telemetry(self, stream: str) -> str:
        return f"{self.base}/telemetry/{stream}"


def fleet_response_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/{FLEET_SEGMENT}/responses/{client_id}"


def all_devices_filter(prefix: str, leaf: str) -> str:
    return f"{prefix}/+/{leaf}"


def device_of(prefix: str, topic: str) -> str | None:
    """D for a topic P/D/..., None otherwise."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    device, sep, _ = topic[len(head) :].partition("/")
    return device if sep and device and device != FLEET_SEGMENT else None


# --------------------------------------------------------------------------- envelopes


def encode(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON with the schema version first."""
    return json.dumps({"schema": SCHEMA_VERSION, **doc}, separators=(",", ":"), ensure_ascii=False).encode()


def presence_payload(status: str) -> bytes:
    # The last will is fixed at connect time, so the offline message carries no timestamp;
    # "last seen" comes from the reported document's ts.
    doc: dict[str, Any] = {"status": status}
    if status == PRESENCE_ONLINE:
        doc["ts"] = round(time.time(), 3)
    return encode(doc)


def parse_presence(payload: bytes) -> tuple[str, float | None]:
    """(status, ts). Accepts the JSON envelope and bare "online"/"offline" text."""
    try:
        doc = json.loads(payload)
    except ValueError:
        text = payload.decode("utf-8", "replace").strip()
        return (text if text in (PRESENCE_ONLINE, PRESENCE_OFFLINE) else "unknown"), None
    if isinstance(doc, str):
        return doc, None
    if not isinstance(doc, dict):
        return "unknown", None
    status = doc.get("status")
    ts = doc.get("ts")
    return (status if isinstance(status, str) else "unknown"), (float(ts) if isinstance(ts, int | float) else None)


def command_request(args: dict[str, Any]) -> bytes:
    return encode({"args": args})


def command_response_ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


class CommandFailed(Exception):
    """A command refused or failed with a machine-readable code (device side: raised by a handler;
    fleet side: raised for an error answer)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


def command_response_error(code: str, description: str) -> bytes:
    return encode({"ok": False, "error": {"code": code, "description": description}})


def command_answer_result(answer: Any) -> Any:
    """Fleet side: the result of a decoded answer envelope, or CommandFailed."""
    if not isinstance(answer, dict):
        raise CommandFailed("bad_answer", f"answer is not a JSON object: {answer!r:.100}")
    if answer.get("ok") is True:
        return answer.get("result")
    error = answer.get("error")
    if isinstance(error, dict):
        raise CommandFailed(str(error.get("code", "error")), str(error.get("description", "")))
    raise CommandFailed("error", str(error))


def reported_document(device_id: str, sequence: int, sections: dict[str, Any]) -> bytes:
    return encode({"deviceId": device_id, "sequence": sequence, "ts": round(time.time(), 3), **sections})


def desired_document(version: int, deployment: dict[str, Any], properties: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {"version": version, "deployment": deployment}
    if properties:
        doc["properties"] = properties
    return encode(doc)
