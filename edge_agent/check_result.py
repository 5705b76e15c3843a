"""What one `edge-agent check` line is. A leaf of its own so that every room can add a check
(identity, diagnostics) without importing the list of checks, which imports the rooms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

Outcome = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Outcome
    detail: str
    hint: str = ""


CheckFn = Callable[["AgentConfig"], CheckResult]
