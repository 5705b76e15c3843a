"""The refusal raised by the document checks (admission.py, deployment/manifest.py)."""

from __future__ import annotations


class DesiredRejected(Exception):
    """A desired document (or its deployment) was refused. `code` is machine-readable and listed in
    docs/protocol.md (e.g. too_large, invalid_utf8, unsigned, replayed, invalid_deployment);
    `description` names the field or module at fault and is reported upstream."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
