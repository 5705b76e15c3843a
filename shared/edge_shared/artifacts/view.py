"""How `edge-agent status` and `edgectl show` print a module's artifacts (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _short(digest: Any) -> str:
    return str(digest)[:19] if digest else "none"


def artifact_lines(name: str, state: Mapping[str, Any]) -> list[tuple[bool, str]]:
    """(needs attention, text) per artifact of a module's reported entry: what is pinned, what is
    placed, and what the module says it drives with."""
    out: list[tuple[bool, str]] = []
    artifacts = state.get("artifacts")
    if not isinstance(artifacts, Mapping):
        return out
    raw_report = state.get("moduleReport")
    report: Mapping[str, Any] = raw_report if isinstance(raw_report, Mapping) else {}
    using = ", ".join(_short(d) for d in report.get("using", [])) or "nothing reported"
    for path, a in sorted(artifacts.items()):
        if not isinstance(a, Mapping):
            continue
        pinned, placed = a.get("digest"), a.get("placed")
        said = str(a.get("module", ""))
        text = f"{name} artifact {path}: {a.get('ref')} placed {_short(placed)}"
        if a.get("previous"):
            text += f" (previous {_short(a.get('previous'))})"
        text += f"; module drives with {using}"
        if said:
            text += f" [{said}]"
        if said == "refused" and a.get("refusedReason"):
            text += f": {a['refusedReason']}"
        out.append((placed != pinned or said in ("refused", "waiting"), text))
    for refused in report.get("refused", []) if isinstance(report.get("refused"), list) else []:
        if isinstance(refused, Mapping):
            out.append((False, f"{name} refused {_short(refused.get('digest'))}: {refused.get('reason')}"))
    return out
