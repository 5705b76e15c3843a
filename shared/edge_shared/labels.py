"""Device labels (`[device] labels` in the agent config) and label selectors (`edgectl devices
--selector`, `edgectl rollout --selector`). Pure: no I/O.

A label is `key = "value"`. Keys: 1-63 characters, letters, digits, '_', '.', '-', starting and
ending with a letter or digit. Values: the same characters, 0-63 of them (empty allowed). At most
MAX_LABELS labels per device. ',' '=' '!' and spaces can never be part of a key or value, so a
selector such as `site=turin,hw!=rev-b` has one reading.

A selector is a comma-separated list of requirements, all of which must hold:
    key=value    the label is present with this value
    key!=value   the label is absent, or has another value
    key          the label is present (any value)
    !key         the label is absent
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

MAX_LABELS = 64
MAX_KEY = 63
MAX_VALUE = 63
_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
KEY_RULE = "1-63 letters, digits, '_', '.', '-', starting and ending with a letter or digit"
VALUE_RULE = "0-63 letters, digits, '_', '.', '-', starting and ending with a letter or digit"


class LabelError(ValueError):
    """A label or selector that breaks the rules; the message says which and why."""


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def key_problem(key: str) -> str | None:
    if _KEY.fullmatch(key):
        return None
    return f"label key {_show(key)}: expected {KEY_RULE}"


def value_problem(key: str, value: str) -> str | None:
    if _VALUE.fullmatch(value):
        return None
    return f"label {key}: value {_show(value)}: expected {VALUE_RULE}"


def check_labels(labels: Mapping[str, object]) -> dict[str, str]:
    """The labels as a plain dict, or LabelError naming the first problem."""
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{len(labels)} labels; at most {MAX_LABELS} are allowed")
    out: dict[str, str] = {}
    for key, value in labels.items():
        problem = key_problem(str(key))
        if problem:
            raise LabelError(problem)
        if not isinstance(value, str):
            raise LabelError(f"label {key}: expected a string value, got {type(value).__name__}")
        problem = value_problem(key, value)
        if problem:
            raise LabelError(problem)
        out[key] = value
    return out


def reported_labels(section: object) -> dict[str, str] | None:
    """Labels from a device's reported `device` section; None when the device reports none (an
    agent without labels support) or something that breaks the rules."""
    if not isinstance(section, Mapping):
        return None
    labels = section.get("labels")
    if not isinstance(labels, Mapping):
        return None
    try:
        return check_labels(labels)
    except LabelError:
        return None


Op = Literal["=", "!=", "exists", "absent"]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    value: str = ""

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        return {"=": f"{self.key}={self.value}", "!=": f"{self.key}!={self.value}",
                "exists": self.key, "absent": f"!{self.key}"}[self.op]


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Every requirement holds. A device that reports no labels matches only a selector whose
        requirements all hold on no labels (`!key`, `key!=value`)."""
        return all(r.holds(labels or {}) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def parse_selector(text: str) -> Selector:
    """`key=value,key2!=value2,key3,!key4` (see the module docstring); LabelError when malformed."""
    if not text.strip():
        raise LabelError("empty selector: expected key=value[,key=value...]")
    requirements: list[Requirement] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise LabelError(f"selector {_show(text)}: an empty requirement (two commas, or a trailing comma)")
        if "!=" in part:
            key, _, value = part.partition("!=")
            op: Op = "!="
        elif "=" in part:
            key, _, value = part.partition("=")
            op = "="
            if value.startswith("="):
                raise LabelError(f"selector requirement {_show(part)}: use key=value ('==' is not a selector operator)")
        elif part.startswith("!"):
            key, value, op = part[1:], "", "absent"
        else:
            key, value, op = part, "", "exists"
        key, value = key.strip(), value.strip()
        problem = key_problem(key) or (value_problem(key, value) if op in ("=", "!=") else None)
        if problem:
            raise LabelError(f"selector requirement {_show(part)}: {problem}")
        requirements.append(Requirement(key, op, value))
    return Selector(tuple(requirements))
