"""`edge-agent check` lines from a health sample: power (under-voltage), heat (throttling,
frequency capping) and a nearly full disk. Pure: a sample in, CheckResults out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.check_result import CheckResult
from edge_agent.config import AgentConfig

DISK_NEARLY_FULL_PERCENT = 90.0
HOT_CELSIUS = 80.0  # a Pi 4 starts soft throttling at 80 degrees C, hard at 85


def power_result(sample: Mapping[str, Any]) -> CheckResult:
    name = "power and throttling"
    flags = sample.get("throttling")
    if not isinstance(flags, Mapping):
        why = (sample.get("absent") or {}).get("throttling", "no throttling flags")
        return CheckResult(name, "pass", f"not measured here: {why}")
    now = [text for key, text in (("underVoltageNow", "UNDER-VOLTAGE now"), ("throttledNow", "throttled now"),
                                   ("frequencyCappedNow", "ARM frequency capped now"),
                                   ("softTempLimitNow", "soft temperature limit active now")) if flags.get(key)]
    before = [text for key, text in (("underVoltageOccurred", "under-voltage"), ("throttledOccurred", "throttling"),
                                      ("frequencyCappedOccurred", "frequency capping"),
                                      ("softTempLimitOccurred", "soft temperature limit")) if flags.get(key)]
    if now or before:
        detail = "; ".join(filter(None, [", ".join(now), f"since boot: {', '.join(before)}" if before else ""]))
        hint = ("use the official power supply (5.1 V, 3 A for a Pi 4) and a short thick cable"
                if flags.get("underVoltageNow") or flags.get("underVoltageOccurred")
                else "improve cooling (heatsink, fan, airflow); a throttled CPU runs modules slower")
        return CheckResult(name, "warn", f"{detail} (get_throttled {flags.get('raw')})", hint)
    return CheckResult(name, "pass", f"no under-voltage or throttling since boot (get_throttled {flags.get('raw')})")


def temperature_result(sample: Mapping[str, Any]) -> CheckResult:
    name = "CPU temperature"
    temp = sample.get("cpuTemperature")
    if not isinstance(temp, Mapping):
        return CheckResult(name, "pass", f"not measured here: {(sample.get('absent') or {}).get('cpuTemperature')}")
    celsius = temp.get("celsius")
    text = f"{celsius} °C ({temp.get('zone')})"
    if isinstance(celsius, int | float) and celsius >= HOT_CELSIUS:
        return CheckResult(name, "warn", text + f", at or above {HOT_CELSIUS:.0f} °C", "improve cooling")
    return CheckResult(name, "pass", text)


def disk_result(sample: Mapping[str, Any]) -> CheckResult:
    name = "disk use"
    disk = sample.get("disk")
    if not isinstance(disk, Mapping):
        return CheckResult(name, "warn", f"cannot measure: {(sample.get('absent') or {}).get('disk')}")
    used = disk.get("usedPercent", 0.0)
    text = f"{used}% used on {disk.get('path')}"
    if isinstance(used, int | float) and used >= DISK_NEARLY_FULL_PERCENT:
        return CheckResult(name, "warn", text + f" (at or above {DISK_NEARLY_FULL_PERCENT:.0f}%)",
                           "free space: old images (podman image prune), journal (journalctl --vacuum-size)")
    return CheckResult(name, "pass", text)


def health_results(sample: Mapping[str, Any]) -> list[CheckResult]:
    return [power_result(sample), temperature_result(sample), disk_result(sample)]


def run_all_checks(config: AgentConfig) -> list[CheckResult]:
    """`edge-agent check`: the agent's checks (edge_agent/checks.py), then the health lines."""
    from edge_agent.checks import run_checks

    results = run_checks(config)
    try:
        results.extend(check_health(config))
    except Exception as exc:  # a broken check is a failed check, not a crash
        results.append(CheckResult("health", "fail", f"check crashed: {exc!r}"))
    return results


def check_health(config: AgentConfig, root: Path = Path("/")) -> list[CheckResult]:
    """One fresh sample of this machine (no module stats: check does not need the agent)."""
    from edge_agent.diagnostics.health import HealthSampler

    state_dir = config.state.dir if config.state.dir.exists() else config.state.dir.parent
    return health_results(HealthSampler(root=root, state_dir=state_dir).sample())
