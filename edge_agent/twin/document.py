"""Strict parsing of the desired document: bytes in, a validated document or DesiredRejected out.

Pure functions, no I/O. The order of checks is the order of cost: size, UTF-8, nesting depth
(a cheap scan, so `json.loads` never recurses deep), JSON syntax, schema version, field types.

The depth scan is hand-written because the json module has no depth limit: it removes string
literals with one regular expression (C speed) and counts brackets in what remains.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from edge_agent.strict_json import loads_strict
from edge_agent.twin.events import DesiredRejected
from edge_agent.twin.protocol import SCHEMA_VERSION
from edge_agent.validation import summary

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_VERSION = 2**53 - 1  # survives a round trip through JavaScript tooling
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

DeploymentValidator = Callable[[Mapping[str, Any]], object]
SignatureGate = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_DOCUMENT_BYTES
    max_depth: int = MAX_DEPTH


@dataclass(frozen=True)
class DesiredDocument:
    """A desired document that passed every check of its own (not yet the replay check)."""

    version: int
    deployment: Mapping[str, Any]
    properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    digest: str = ""  # sha256 of the exact bytes received, to tell a re-delivery from a conflict


class _DesiredModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    schema_: Literal[1] = Field(alias="schema")
    version: StrictInt = Field(ge=1, le=MAX_VERSION)
    deployment: dict[str, Any]
    properties: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Optional free-form metadata from the fleet side (who deployed, when); not acted on.
    meta: dict[str, Any] = Field(default_factory=dict)


def nesting_depth(data: bytes) -> int:
    """Deepest bracket nesting of JSON text, ignoring brackets inside strings. Never recurses."""
    brackets = _STRING_LITERAL.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def load_json(raw: bytes, limits: Limits = Limits()) -> Any:
    """Size, encoding, depth and syntax checks; raises DesiredRejected naming what is wrong."""
    if len(raw) > limits.max_bytes:
        raise DesiredRejected("too_large", f"document is {len(raw)} bytes; the limit is {limits.max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DesiredRejected("invalid_utf8", f"document is not UTF-8: invalid byte at offset {exc.start}") from None
    depth = nesting_depth(raw)
    if depth > limits.max_depth:
        raise DesiredRejected("too_deep", f"JSON nests {depth} levels deep; the limit is {limits.max_depth}")
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        raise DesiredRejected(
            "invalid_json", f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:  # duplicate keys, NaN, huge ints
        raise DesiredRejected("invalid_json", f"not valid JSON: {exc}") from None


def _describe(exc: ValidationError) -> str:
    return summary(exc)


def parse_desired(raw: bytes, limits: Limits = Limits()) -> DesiredDocument:
    """Bytes of a desired document (after the signature gate) -> DesiredDocument, or DesiredRejected."""
    data = load_json(raw, limits)
    if not isinstance(data, dict):
        raise DesiredRejected("invalid_document", f"expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if "schema" not in data:
        raise DesiredRejected("invalid_document", "schema: field required (the envelope's schema version)")
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise DesiredRejected(
            "unsupported_schema", f"schema: got {json.dumps(schema)[:40]}; this agent understands {SCHEMA_VERSION}"
        )
    try:
        model = _DesiredModel.model_validate(data)
    except ValidationError as exc:
        raise DesiredRejected("invalid_document", _describe(exc)) from None
    return DesiredDocument(
        version=model.version,
        deployment=model.deployment,
        properties=model.properties,
        digest=hashlib.sha256(raw).hexdigest(),
    )


def default_deployment_validator(deployment: Mapping[str, Any]) -> object:
    """Until the deployment layer supplies its own: a "modules" object whose values are objects."""
    modules = deployment.get("modules")
    if not isinstance(modules, dict):
        raise DesiredRejected("invalid_deployment", "deployment.modules: expected an object of module specs")
    for name, spec in modules.items():
        if not isinstance(spec, dict):
            raise DesiredRejected("invalid_deployment", f"deployment.modules.{name}: expected an object")
    return deployment


def identity_gate(raw: bytes) -> bytes:
    return raw


Verdict = Literal["accept", "duplicate"]


def version_verdict(doc: DesiredDocument, last_version: int | None, last_digest: str | None) -> Verdict:
    """Replay protection. The same bytes again (a retained re-delivery after reconnect) are a
    duplicate, not an error; any other document must carry a newer version."""
    if last_version is None or doc.version > last_version:
        return "accept"
    if doc.version == last_version and doc.digest == last_digest:
        return "duplicate"
    raise DesiredRejected(
        "replayed",
        f"version {doc.version} is not newer than the accepted version {last_version}; "
        "a new deployment needs a higher version",
    )


def evaluate(
    raw: bytes,
    *,
    last_version: int | None,
    last_digest: str | None,
    limits: Limits = Limits(),
    signature_gate: SignatureGate = identity_gate,
    validate_deployment: DeploymentValidator = default_deployment_validator,
) -> tuple[Verdict, DesiredDocument, bytes]:
    """The whole decision for one received payload: (verdict, document, the gate's output, which
    is what gets stored). Raises DesiredRejected."""
    if len(raw) > limits.max_bytes:  # before the gate, so nothing large is ever parsed
        raise DesiredRejected("too_large", f"document is {len(raw)} bytes; the limit is {limits.max_bytes}")
    payload = signature_gate(raw)
    doc = parse_desired(payload, limits)
    # digest over what was received (envelope included), so a re-signed copy counts as new bytes
    doc = DesiredDocument(doc.version, doc.deployment, doc.properties, hashlib.sha256(raw).hexdigest())
    verdict = version_verdict(doc, last_version, last_digest)
    if verdict == "accept":
        validate_deployment(doc.deployment)
    return verdict, doc, payload


def peek_version(raw: bytes, limits: Limits = Limits()) -> int | None:
    """Best-effort version of a refused document, for the report. Never raises."""
    try:
        data = load_json(raw, limits)
    except DesiredRejected:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
