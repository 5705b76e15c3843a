"""What a module says about the artifacts it uses, and what that means for a deployment (pure).

A module reports on telemetry stream `module.artifacts` (through its own ingest socket, so the
agent knows which module is speaking) a JSON object:

    {"using": ["sha256:<layer digest>", ...],
     "refused": [{"digest": "sha256:<layer digest>", "reason": "input shape [1, 3, 64, 64] ..."}]}

`using` names the files (by the digest of their bytes, i.e. the artifact's layer digest) the
module drives with now; `refused` the ones it checked and would not use, with its reason.
edge-pilot sends it when its model changes or it refuses one, and every few seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STREAM = "module.artifacts"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_REASON = 500


@dataclass(frozen=True)
class ModuleReport:
    using: frozenset[str] = frozenset()
    refused: Mapping[str, str] = field(default_factory=dict)  # layer digest -> reason
    at: float = 0.0


class ReportError(ValueError):
    pass


def parse_report(payload: bytes, at: float) -> ModuleReport:
    try:
        doc: Any = json.loads(payload)
    except ValueError as exc:
        raise ReportError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReportError("expected an object with using and refused")
    using = doc.get("using", [])
    if not isinstance(using, list) or not all(isinstance(d, str) and _DIGEST.match(d) for d in using):
        raise ReportError("using: expected a list of sha256:<hex> digests")
    refused_raw = doc.get("refused", [])
    if not isinstance(refused_raw, list):
        raise ReportError("refused: expected a list of {digest, reason}")
    refused: dict[str, str] = {}
    for i, item in enumerate(refused_raw[:32]):
        if not isinstance(item, dict) or not isinstance(item.get("digest"), str) or not _DIGEST.match(item["digest"]):
            raise ReportError(f"refused[{i}]: expected {{digest: sha256:<hex>, reason: text}}")
        refused[item["digest"]] = str(item.get("reason", ""))[:MAX_REASON]
    return ModuleReport(frozenset(using), refused, at)


@dataclass(frozen=True)
class Confirmed:
    digest: str


@dataclass(frozen=True)
class Waiting:
    reason: str


@dataclass(frozen=True)
class ModuleRefused:
    digest: str
    reason: str


Confirmation = Confirmed | Waiting | ModuleRefused


def confirmation(what: str, layers: frozenset[str], report: ModuleReport | None) -> Confirmation:
    """Does the module drive with one of `layers` (the placed artifact's layer digests)?"""
    if not layers:
        return Waiting(f"{what}: not placed yet")
    for digest in sorted(layers):
        if report is not None and digest in report.refused:
            return ModuleRefused(digest, report.refused[digest])
    for digest in sorted(layers):
        if report is not None and digest in report.using:
            return Confirmed(digest)
    if report is None:
        return Waiting(f"{what}: the module has not reported which artifact it uses")
    using = ", ".join(d[:19] for d in sorted(report.using)) or "nothing"
    return Waiting(f"{what}: the module still uses {using}")
