"""Name rules both sides check: device ids, module names, telemetry stream names. One rule per
name, used alike by the agent's config ([device] id, [mqtt] client_id, [telemetry] modules and
streams), the deployment document's module table, telemetry ingest and edgectl.

A module name becomes part of its container's name and the container's host name, so it is one
DNS label: lower-case letters, digits, '_' and '-', no dots, at most 63 characters."""

from __future__ import annotations

import re

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MODULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
STREAM_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
MODULE_NAME_RE = re.compile(MODULE_NAME_PATTERN)
STREAM_NAME_RE = re.compile(STREAM_NAME_PATTERN)


def is_device_id(text: str) -> bool:
    return DEVICE_ID_RE.fullmatch(text) is not None


def is_module_name(text: str) -> bool:
    return MODULE_NAME_RE.fullmatch(text) is not None


def is_stream_name(text: str) -> bool:
    return STREAM_NAME_RE.fullmatch(text) is not None
