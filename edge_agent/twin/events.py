"""What the twin layer hands to the rest of the agent: typed values, no MQTT inside."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class DesiredState:
    """An accepted desired document: validated, persisted, newer than the one before."""

    version: int
    deployment: Mapping[str, Any]
    properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Literal["broker", "stored"] = "broker"


class DesiredRejected(Exception):
    """A desired document (or its deployment) was refused. `code` is machine-readable
    (e.g. invalid_json, replayed, bad_signature, invalid_deployment); `description` names the
    field or module at fault and is reported upstream as lastDesiredStatus."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
