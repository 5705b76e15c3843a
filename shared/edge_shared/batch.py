"""Telemetry batches on the wire: what the device's uplink publishes and the fleet decodes.
One JSON object per batch of one stream, zlib-compressed above COMPRESS_MIN_BYTES."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any, Protocol


class BatchRecord(Protocol):
    """One queued record as encode_batch reads it (the device's telemetry queue row)."""

    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def received(self) -> float: ...
    @property
    def priority(self) -> int: ...
    @property
    def module(self) -> str | None: ...
    @property
    def deployment(self) -> int | None: ...
    @property
    def payload(self) -> bytes: ...


CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_ZLIB = "application/json+zlib"
COMPRESS_MIN_BYTES = 1024
SCHEMA = 1


def encode_batch(device: str, stream: str, records: Sequence[BatchRecord], compress: bool) -> tuple[bytes, str]:
    """The MQTT payload and content type for records of one stream (payloads are JSON already)."""
    head = json.dumps({"schema": SCHEMA, "device": device, "stream": stream}, separators=(",", ":"))[:-1]
    parts = [
        b'{"id":"%s","seq":%d,"ts":%s,"received":%s,"priority":%d,"module":%s,%s"payload":%s}'
        % (
            r.id.encode(),
            r.seq,
            repr(round(r.ts, 6)).encode(),
            repr(round(r.received, 6)).encode(),
            r.priority,
            json.dumps(r.module).encode(),
            b"" if r.deployment is None else b'"deployment":%d,' % r.deployment,
            r.payload,
        )
        for r in records
    ]
    body = head.encode() + b',"records":[' + b",".join(parts) + b"]}"
    if compress and len(body) >= COMPRESS_MIN_BYTES:
        return zlib.compress(body, 6), CONTENT_TYPE_ZLIB
    return body, CONTENT_TYPE_JSON


def decode_batch(payload: bytes, content_type: str | None = None) -> dict[str, Any]:
    """Inverse of encode_batch (fleet side). Without a content type, a zlib stream is recognised."""
    if content_type == CONTENT_TYPE_ZLIB or (content_type is None and payload[:1] == b"\x78"):
        payload = zlib.decompress(payload)
    doc = json.loads(payload)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("records"), list):
        raise ValueError("not a telemetry batch (schema 1)")
    return doc
