"""Text rendering for `edgectl show` and `edgectl devices`: pure functions of the fetched views."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from edge_shared.artifacts.view import artifact_lines
from edge_shared.status_view import agent_update_line
from edgectl.client import DeviceView

RED, YELLOW, GREEN, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[0m"
HEALTHY = {"running", "healthy", "exited_ok", "stopped_as_desired"}
FAILED_STATES = {"rejected", "superseded", "failed", "rolled_back"}


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    seconds = max(0, int(now - ts))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def diff_lines(view: DeviceView) -> list[tuple[bool, str]]:
    """(is_difference, text) lines comparing desired and reported."""
    out: list[tuple[bool, str]] = []
    desired = view.desired or {}
    reported = view.reported or {}
    dsec = reported.get("deployment") or {}
    d_version = desired.get("version")
    current = dsec.get("current")
    if view.desired_error:
        out.append((True, f"desired document on the broker is unreadable: {view.desired_error}"))
    out.append((
        d_version != current,
        f"desired version {d_version}   device runs {current} (last known good {dsec.get('lastKnownGood')})",
    ))
    retained_digest = hashlib.sha256(view.desired_raw).hexdigest() if view.desired_raw else None
    versions = dsec.get("versions") or {}
    for key in sorted(versions, key=lambda k: int(k) if str(k).isdigit() else -1, reverse=True)[:5]:
        entry = versions[key]
        if not isinstance(entry, dict):
            continue
        v_state = str(entry.get("state"))
        detail = ": ".join(str(entry[k]) for k in ("code", "module") if entry.get(k))
        text = f"version {key}: {v_state}" + (f": {detail}" if detail else "")
        if entry.get("description"):
            text += f" ({entry['description']})"
        mine = entry.get("digest") == retained_digest
        out.append((v_state in FAILED_STATES or (mine and v_state != "good"), text))
    refused = dsec.get("lastRefused")
    if isinstance(refused, dict):
        who = f"version {refused['version']}" if refused.get("version") is not None else "not authenticated"
        mine = refused.get("digest") == retained_digest
        text = (f"last refused document ({who}{', the one on the broker' if mine else ''}): "
                f"{refused.get('code')}: {refused.get('description')} at {refused.get('at')}")
        out.append((mine, text))
    if dsec.get("error"):
        out.append((True, f"device error: {dsec['error']}"))
    d_modules = (desired.get("deployment") or {}).get("modules") or {}
    r_modules = reported.get("modules") or {}
    names = sorted(set(d_modules) | set(r_modules))
    if names:
        out.append((False, f"{'MODULE':<20} {'DESIRED IMAGE':<40} {'REPORTED':<12} REPORTED IMAGE"))
    for name in names:
        spec = d_modules.get(name)
        state = r_modules.get(name)
        d_image = str(spec.get("image", "")) if isinstance(spec, dict) else ""
        if not isinstance(state, dict):
            out.append((True, f"{name:<20} {d_image:<40} {'(missing)':<12}"))
            continue
        r_status = str(state.get("runtimeStatus", "?"))
        r_image = str(state.get("image", ""))
        if spec is None:
            out.append((True, f"{name:<20} {'(not desired)':<40} {r_status:<12} {r_image}"))
            continue
        differs = r_status not in HEALTHY or (bool(d_image) and bool(r_image) and d_image != r_image)
        line = f"{name:<20} {d_image:<40} {r_status:<12} {r_image}"
        if state.get("statusDescription"):
            line += f"  ({state['statusDescription']})"
        out.append((differs, line))
        out.extend(artifact_lines(name, state))
    return out


def render_view(view: DeviceView, *, color: bool, now: float) -> str:
    reported = view.reported or {}
    agent = reported.get("agent") or {}
    head = f"device {view.device}: {view.presence}"
    if view.presence == "online" and view.presence_ts:
        head += f" (since {_ago(view.presence_ts, now)})"
    head += f", last report {_ago(_num(reported.get('ts')), now)}"
    if agent:
        head += f", agent {agent.get('version')} {agent.get('os')}/{agent.get('arch')}"
    lines = [head]
    update = agent_update_line(reported.get("agentUpdate"))
    if update:
        lines.append(f"  agent update: {update}")
    if view.desired is None and view.reported is None:
        lines.append("nothing known about this device (no desired or reported document on the broker)")
    for differs, text in diff_lines(view):
        if differs:
            lines.append(f"{RED}! {text}{RESET}" if color else f"! {text}")
        else:
            lines.append(f"  {text}")
    return "\n".join(lines)


def _version_state(section: Any, version: Any) -> str | None:
    entry = ((section or {}).get("versions") or {}).get(str(version)) if isinstance(section, dict) else None
    return str(entry.get("state")) if isinstance(entry, dict) and entry.get("state") else None


def deployment_state(section: Any) -> str:
    """The device's own word on what it runs: the state of its current version, and the newest
    version's when that is another one (`good`, `probation`, `good; 7 rolled_back`)."""
    if not isinstance(section, dict):
        return "unknown"
    current, newest = section.get("current"), section.get("highestVersion")
    text = (_version_state(section, current) or "?") if current is not None else "none"
    if newest is not None and newest != current:
        text += f"; {newest} {_version_state(section, newest) or '?'}"
    if section.get("error"):
        text += "; runtime error"
    return text


def device_rows(views: Iterable[DeviceView], now: float) -> list[dict[str, Any]]:
    from edge_shared.labels import reported_labels

    rows = []
    for v in views:
        reported = v.reported or {}
        last_report = _num(reported.get("ts"))
        seen = now if v.presence == "online" else last_report
        section = reported.get("deployment")
        current = section.get("current") if isinstance(section, dict) else None
        rows.append(
            {
                "device": v.device,
                "presence": v.presence,
                "lastSeen": seen,
                "lastReport": last_report,
                "currentVersion": current,
                "currentState": _version_state(section, current),
                "newestVersion": section.get("highestVersion") if isinstance(section, dict) else None,
                "deploymentState": deployment_state(section),
                "labels": reported_labels(reported.get("device")),
                "agentVersion": (reported.get("agent") or {}).get("version"),
                "agentWanted": (reported.get("agentUpdate") or {}).get("wanted"),
                "agentUpdateState": (reported.get("agentUpdate") or {}).get("state"),
            }
        )
    return rows


def render_devices(views: Iterable[DeviceView], now: float, *, selector: str | None = None) -> str:
    rows = device_rows(views, now)
    if not rows:
        return f"no device matches {selector}" if selector else "no devices on this broker/prefix"
    lines = [f"{'DEVICE':<24} {'STATUS':<8} {'LAST SEEN':<14} {'VERSION':<8} {'STATE':<22} {'AGENT':<8} LABELS"]
    for r in rows:
        seen = "now" if r["presence"] == "online" else _ago(r["lastSeen"], now)
        labels = ",".join(f"{k}={v}" for k, v in sorted((r["labels"] or {}).items()))
        lines.append(
            f"{r['device']:<24} {r['presence']:<8} {seen:<14} {r['currentVersion']!s:<8} "
            f"{r['deploymentState']:<22} {_agent_cell(r):<8} {labels}".rstrip()
        )
    return "\n".join(lines)


def _agent_cell(row: dict[str, Any]) -> str:
    """The running agent version, and `>wanted (state)` while a different one is wanted."""
    running, wanted = row["agentVersion"] or "", row.get("agentWanted")
    if wanted and wanted != running:
        return f"{running}>{wanted} ({row.get('agentUpdateState')})"
    return running
