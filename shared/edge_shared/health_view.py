"""The "health" reported section as text for `edge-agent status` (and `edgectl show`): pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def health_lines(health: Any) -> list[str]:
    if not isinstance(health, Mapping):
        return []
    absent: Mapping[str, Any] = health.get("absent") or {}
    parts: list[str] = []
    temp = health.get("cpuTemperature")
    parts.append(f"CPU {temp.get('celsius')} °C ({temp.get('zone')})" if isinstance(temp, Mapping)
                 else "CPU temperature ABSENT")
    flags = health.get("throttling")
    if isinstance(flags, Mapping):
        now = [k.removesuffix("Now") for k in ("underVoltageNow", "throttledNow", "frequencyCappedNow",
                                               "softTempLimitNow") if flags.get(k)]
        before = [k.removesuffix("Occurred") for k in ("underVoltageOccurred", "throttledOccurred",
                                                       "frequencyCappedOccurred", "softTempLimitOccurred")
                  if flags.get(k)]
        text = f"get_throttled {flags.get('raw')}"
        if now:
            text += " NOW: " + ", ".join(now)
        if before:
            text += " since boot: " + ", ".join(before)
        parts.append(text if now or before else text + " (no under-voltage or throttling)")
    else:
        parts.append("throttling ABSENT")
    mem = health.get("memory")
    if isinstance(mem, Mapping):
        parts.append(f"memory {_size(mem.get('availableBytes'))} available of {_size(mem.get('totalBytes'))}")
    disk = health.get("disk")
    if isinstance(disk, Mapping):
        parts.append(f"disk {_size(disk.get('freeBytes'))} free of {_size(disk.get('totalBytes'))} "
                     f"({disk.get('usedPercent')}% used)")
    writes = health.get("storageWrites")
    if isinstance(writes, Mapping) and "bytesPerHour" in writes:
        text = f"agent writes {_size(writes['bytesPerHour'])}/h (over {writes.get('windowS')} s)"
        if "bytesPerRecord" in writes:
            text += (f", {_size(writes['bytesPerRecord'])} per telemetry record stored "
                     f"({writes.get('timesRecordBytes')}x the records' own bytes, {writes.get('records')} records)")
        parts.append(text)
    elif isinstance(writes, Mapping):
        parts.append(f"agent wrote {_size(writes.get('sinceStartBytes'))} in {writes.get('windowS')} s "
                     "(a rate after 60 s)")
    lines = [f"{'health':<12}{'; '.join(parts)}"]
    modules = health.get("modules")
    if isinstance(modules, Mapping):
        for name, m in sorted(modules.items()):
            if not isinstance(m, Mapping):
                continue
            cpu = f"CPU {m['cpuPercent']}%" if "cpuPercent" in m else f"CPU {m.get('cpuSeconds', '?')} s in total"
            limit = f" of {_size(m['memoryLimitBytes'])}" if "memoryLimitBytes" in m else ""
            lines.append(f"{'':<12}{name}: {cpu}, memory {_size(m.get('memoryBytes'))}{limit}")
    for key, why in sorted(absent.items()):
        lines.append(f"{'':<12}{key} ABSENT: {why}")
    return lines
