"""The one formatter of pydantic validation errors, for every model parsed at a boundary: the
agent's config file (config.py), the fleet config (fleet/config.py), the desired-document
envelope (its `_describe`) and the deployment document (edge_shared/spec.py).

Each surface keeps its own location prefix (file:line, `module 'pilot':`) and its own noun
("key" in TOML files, "field" in JSON documents); what a problem says is made here:

    unknown field / unknown key              (extra_forbidden)
    required field is missing                (missing)
    got 'sometimes'; expected one of ...     (a value that does not fit)

Two phrasings of pydantic's own "Input should be X" exist, because both are what operators and
fleet tooling already match on: "should be X" (config files, the envelope) and "expected X" (the
deployment document, whose custom errors all say "expected ..."). Custom errors
(PydanticCustomError) are passed through as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

Style = Literal["should", "expected"]
_PREFIXES = re.compile(r"^(Value error|Assertion failed), ")


def location(loc: Sequence[Any]) -> str:
    """("modules", "pilot", "image") -> "modules.pilot.image"."""
    return ".".join(str(p) for p in loc)


def message(err: Mapping[str, Any], style: Style = "should") -> str:
    """What is wrong with the value, without pydantic's prefixes, in the given phrasing."""
    text = _PREFIXES.sub("", str(err["msg"]))
    if style == "expected":
        ctx = err.get("ctx") or {}
        if err["type"] == "literal_error" and "expected" in ctx:
            return "expected one of " + str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
        return re.sub(r"^Input should be ", "expected ", text)
    return re.sub(r"^Input should be ", "should be ", text)


def shown_input(value: Any, *, secret: bool = False, limit: int | None = None) -> str | None:
    """"got 'x'" for a scalar input (None for objects and lists: too long to quote), or
    "got a secret value (hidden)"; `limit` cuts long values with "..."."""
    if secret:
        return "got a secret value (hidden)"
    if value is None or isinstance(value, dict | list):
        return None
    text = repr(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return f"got {text}"


def describe(err: Mapping[str, Any], *, style: Style = "should", noun: str = "field", show_input: bool = True,
             input_limit: int | None = None) -> str:
    """One problem as "unknown field", "required field is missing" or "got X; <message>"."""
    if err["type"] == "extra_forbidden":
        return f"unknown {noun}"
    if err["type"] == "missing":
        return f"required {noun} is missing"
    text = message(err, style)
    got = shown_input(err.get("input"), limit=input_limit) if show_input else None
    return f"{got}; {text}" if got else text


def summary(exc: ValidationError, *, limit: int = 3, style: Style = "should", show_input: bool = False) -> str:
    """The first `limit` problems as "loc: problem; ...; and N more" (loc "document" when empty)."""
    errors = exc.errors()
    parts = [f"{location(e['loc']) or 'document'}: {describe(e, style=style, show_input=show_input)}"
             for e in errors[:limit]]
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
