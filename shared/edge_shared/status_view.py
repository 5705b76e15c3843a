"""`edge-agent status` as text: a pure function of the control socket's status document, so every
state (first boot with nothing deployed, a deployment rolling out, offline, after a refused
reload) reads as sentences, never as `None` or `?`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edge_shared.artifacts.view import artifact_lines

KNOWN = {"agent", "agentUpdate", "attestation", "broker", "config", "deployment", "modules", "telemetry"}


def render_status(status: Mapping[str, Any]) -> str:
    reported: Mapping[str, Any] = status.get("reported") or {}
    lines = [
        f"device {status.get('device', '(unknown)')}  agent {status.get('version', '?')}  "
        f"pid {status.get('pid', '?')}  up {_duration(status.get('uptime_s'))}",
        f"config {status.get('config', '(unknown)')}  state {status.get('state_dir', '(unknown)')}",
    ]
    lines.append(_components(status.get("components") or {}))
    lines.extend(_broker(reported.get("broker")))
    lines.extend(_config(reported.get("config")))
    lines.extend(_deployment(reported.get("deployment")))
    lines.extend(_modules(reported.get("modules")))
    lines.extend(_telemetry(reported.get("telemetry")))
    lines.extend(_attestation(reported.get("attestation")))
    lines.extend(_agent(reported.get("agent")))
    update = agent_update_line(reported.get("agentUpdate"))
    if update:
        lines.append(f"{'update':<12}{update}")
    for section in sorted(set(reported) - KNOWN):
        lines.append(f"{section + ':':<12} {json.dumps(reported[section], sort_keys=True)}")
    return "\n".join(lines)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.0f} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _components(components: Mapping[str, Any]) -> str:
    if not components:
        return "components  none"
    parts = []
    trouble = []
    for name, comp in components.items():
        comp = comp or {}
        if comp.get("stalled"):
            parts.append(f"{name} STALLED")
            trouble.append(f"            {name}: stalled: {comp['stalled']}")
        elif comp.get("last_error"):
            parts.append(f"{name} ok (restarted)")
            trouble.append(f"            {name}: last error: {comp['last_error']}")
        else:
            parts.append(f"{name} ok")
    return "\n".join([f"components  {', '.join(parts)}", *trouble])


def _config(config: Any) -> list[str]:
    if not isinstance(config, Mapping):
        return []
    if config.get("status") == "rejected":
        out = ["reload      REFUSED, running with the previous config:"]
        out += [f"            {p}" for p in config.get("problems") or [config.get("description", "")]]
        return out
    changed = config.get("changed") or []
    return [f"reload      applied; changed: {', '.join(changed) if changed else 'nothing'}"]


def _version_text(version: Any, entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return f"version {version}"
    text = f"version {version} {entry.get('state', 'unknown')}"
    detail = ", ".join(str(entry[k]) if k != "module" else f"module {entry[k]}" for k in ("code", "module")
                       if entry.get(k))
    if detail:
        text += f" ({detail})"
    if entry.get("description"):
        text += f": {entry['description']}"
    return text


def _deployment(deployment: Any) -> list[str]:
    """The reported `deployment` section (docs/protocol.md): what runs, the newest version when it
    is another one, the last refused document, a runtime error."""
    if not isinstance(deployment, Mapping):
        return ["deployment  none yet: no deployment has been received and accepted on this device"]
    versions = deployment.get("versions") or {}
    current, newest = deployment.get("current"), deployment.get("highestVersion")
    out = []
    if current is None:
        out.append("deployment  none yet: no deployment has been received and accepted on this device")
    else:
        line = f"deployment  {_version_text(current, versions.get(str(current)))}"
        lkg = deployment.get("lastKnownGood")
        line += f"; last known good {lkg}" if lkg is not None else "; no known-good version yet"
        out.append(line)
    if newest is not None and newest != current:
        out.append(f"            newest: {_version_text(newest, versions.get(str(newest)))}")
    refused = deployment.get("lastRefused")
    if isinstance(refused, Mapping):
        who = f"version {refused['version']}" if refused.get("version") is not None else "not authenticated"
        out.append(f"            last refused document ({who}): {refused.get('code')}: {refused.get('description')}")
    if deployment.get("error"):
        out.append(f"            error: {deployment['error']}")
    return out


def _modules(modules: Any) -> list[str]:
    if modules is None:
        return []
    if not modules:
        return ["modules     none"]
    lines = ["modules", *("  " + line for line in module_table(modules).splitlines())]
    for name, m in modules.items():
        lines.extend(("! " if attention else "  ") + text for attention, text in artifact_lines(name, m))
    return lines


def module_table(modules: Mapping[str, Any]) -> str:
    """One line per module, like `iotedge list`."""
    if not modules:
        return "no modules"
    rows = [("MODULE", "STATUS", "RESTARTS", "EXIT", "HEALTH", "STARTED", "IMAGE", "DESCRIPTION")]
    for name, m in modules.items():
        exit_code = m.get("exitCode")
        rows.append((
            name,
            str(m.get("runtimeStatus") or "unknown"),
            str(m.get("restartCount", 0)),
            "-" if exit_code is None else str(exit_code),
            str(m.get("health") or "-"),
            str(m.get("startTime") or "-")[:19],
            str(m.get("image", "")),
            str(m.get("statusDescription", "")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def _broker(b: Any) -> list[str]:
    if not isinstance(b, Mapping):
        return []
    endpoints = b.get("endpoints") or []
    where = f" (endpoint {b.get('index')} of {len(endpoints)})" if len(endpoints) > 1 else ""
    if b.get("connected"):
        return [f"broker      connected to {b.get('endpoint')}{where}"]
    return [f"broker      NOT CONNECTED (last {b.get('endpoint')}{where}); trying {', '.join(endpoints)}"]


def _telemetry(t: Any) -> list[str]:
    if not isinstance(t, Mapping):
        return []
    if t.get("status") == "unavailable":
        return [f"telemetry   UNAVAILABLE: {t.get('error', 'unknown error')}"]
    oldest = t.get("oldestAgeS")
    line = (
        f"telemetry   {t.get('depth', 0)} records queued ({_bytes(t.get('bytes'))} of {_bytes(t.get('capBytes'))})"
        + (f", oldest {_duration(oldest)}" if oldest is not None else "")
        + f"; {'connected' if t.get('connected') else 'not connected'}"
        + f", {t.get('uploadRate', 0)} records/s, {t.get('sentRecords', 0)} sent since the agent started"
    )
    out = [line]
    if t.get("diskFull"):
        out.append("            DISK FULL: records are refused until space returns")
    if t.get("lastError"):
        out.append(f"            last upload error: {t['lastError']}")
    for key, label in (("drops", "dropped"), ("refused", "refused")):
        for stream, reasons in sorted((t.get(key) or {}).items()):
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
            out.append(f"            {stream}: {label} {counts}")
    return out


def _attestation(a: Any) -> list[str]:
    if not isinstance(a, Mapping):
        return []
    if a.get("available"):
        line = f"attestation available: {a.get('tpm', 'TPM')}"
        if a.get("akName"):
            line += f", AK {str(a['akName'])[:16]}..."
        if a.get("imagePcr") is not None:
            line += f", {a.get('imageEvents', 0)} image measurements in PCR {a['imagePcr']}"
        return [line]
    return [f"attestation unavailable: {a.get('reason', 'unknown reason')}"]


def _agent(a: Any) -> list[str]:
    if not isinstance(a, Mapping):
        return []
    parts = [f"{a.get('os', '?')} {a.get('arch', '?')}, Python {a.get('python', '?')}"]
    disk = a.get("disk")
    if isinstance(disk, Mapping):
        parts.append(f"{_bytes(disk.get('freeBytes'))} free of {_bytes(disk.get('totalBytes'))} on {disk.get('path')}")
    memory = a.get("memory")
    if isinstance(memory, Mapping) and memory.get("agentRssBytes") is not None:
        parts.append(f"agent memory {_bytes(memory['agentRssBytes'])}")
    return [f"system      {'; '.join(parts)}"]


def agent_update_line(u: Any) -> str | None:
    """The agent's self-update in one line (also `edgectl show`): what is wanted and under way,
    and how the last update ended. None when there is nothing to say."""
    if not isinstance(u, Mapping):
        return None
    running, wanted, state = u.get("running"), u.get("wanted"), u.get("state")
    parts = []
    if wanted and wanted != running:
        parts.append(f"agent {wanted} wanted: {state}" + (f" ({u['detail']})" if u.get("detail") else ""))
    elif state not in (None, "idle"):
        parts.append(f"{state}" + (f" ({u['detail']})" if u.get("detail") else ""))
    trial = u.get("trial")
    if isinstance(trial, Mapping):
        parts.append(f"on trial: {trial.get('version')} (start {trial.get('starts')})")
    last = u.get("last")
    if isinstance(last, Mapping):
        text = f"last update: {last.get('result')} {last.get('previous', '?')} -> {last.get('version')}"
        if last.get("reason"):
            text += f" ({last['reason']})"
        parts.append(text)
    return "; ".join(parts) or None
