"""JSON as an untrusted peer sends it, parsed strictly: duplicate keys, NaN/Infinity and
out-of-range floats are refused. Duplicate keys are a classic way to make two parsers (the
signer's and ours) see two different documents. json.JSONDecodeError is a ValueError, so callers
catch ValueError (and RecursionError, for input they have not depth-checked)."""

from __future__ import annotations

import json
import math
from typing import Any


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads_strict(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_float=_finite)
