"""Device health: pure parsers of what the kernel and the Raspberry Pi firmware expose, and thin
readers that take a root folder (`/` on a device, a fake tree in tests).

What a machine does not have is reported in `absent` with the reason, never guessed: a PC has no
`get_throttled`, a container may have no thermal zone.

Raspberry Pi facts used here (the firmware's documented `get_throttled` bit field, the same
number `vcgencmd get_throttled` prints as `throttled=0x...`; the kernel's firmware driver shows it
as hex digits in /sys/devices/platform/soc/soc:firmware/get_throttled):

| bit | meaning |
|-----|---------|
| 0 | under-voltage detected now |
| 1 | ARM frequency capped now |
| 2 | currently throttled |
| 3 | soft temperature limit active now |
| 16 | under-voltage has occurred since boot |
| 17 | ARM frequency capping has occurred |
| 18 | throttling has occurred |
| 19 | soft temperature limit has occurred |

The SoC temperature is thermal zone `cpu-thermal` (millidegrees Celsius in `temp`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0, "underVoltageNow"),
    (1, "frequencyCappedNow"),
    (2, "throttledNow"),
    (3, "softTempLimitNow"),
    (16, "underVoltageOccurred"),
    (17, "frequencyCappedOccurred"),
    (18, "throttledOccurred"),
    (19, "softTempLimitOccurred"),
)
GET_THROTTLED_SYSFS = "sys/devices/platform/soc/soc:firmware/get_throttled"
THERMAL_DIR = "sys/class/thermal"
# Zone types that are the CPU/SoC, best first: Raspberry Pi (cpu-thermal), Intel package, others.
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "cpu0-thermal", "k10temp")
WRITE_RATE_WINDOW_S = 3600.0
# A rate over a few seconds (the start-up writes) extrapolated to an hour says nothing; below this
# window only the bytes written so far are reported.
MIN_RATE_WINDOW_S = 60.0


# --------------------------------------------------------------------------- pure parsers


def parse_throttled(text: str) -> int:
    """The get_throttled value from `vcgencmd get_throttled` ("throttled=0x50005") or the sysfs
    file ("50005"); ValueError for anything else."""
    value = text.strip()
    match = re.fullmatch(r"(?:throttled=)?(?:0x)?([0-9a-fA-F]{1,8})", value)
    if not match:
        raise ValueError(f"not a get_throttled value: {value[:40]!r}")
    return int(match.group(1), 16)


def throttle_flags(value: int) -> dict[str, Any]:
    """The named bits of a get_throttled value, and the raw value in hex."""
    flags: dict[str, Any] = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS}
    flags["raw"] = f"0x{value:x}"
    return flags


def parse_thermal_zones(zones: Iterable[tuple[str, str, str]]) -> tuple[str, float] | None:
    """(zone type, degrees Celsius) of the CPU's zone among (directory name, type, temp text)
    triples, temp in millidegrees. A recognised CPU type wins; else the first zone with a valid
    reading. None when no zone has one."""
    readings: list[tuple[str, str, float]] = []
    for name, kind, temp in zones:
        try:
            millidegrees = int(temp.strip())
        except ValueError:
            continue
        if -40_000 <= millidegrees <= 150_000:  # outside this a sensor is broken, not hot
            readings.append((name, kind.strip(), millidegrees / 1000))
    if not readings:
        return None
    readings.sort(key=lambda r: (CPU_ZONE_TYPES.index(r[1]) if r[1] in CPU_ZONE_TYPES else len(CPU_ZONE_TYPES),
                                 _zone_number(r[0])))
    return readings[0][1], readings[0][2]


def _zone_number(name: str) -> int:
    digits = name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1_000_000


def parse_meminfo(text: str) -> dict[str, int]:
    """MemTotal, MemAvailable (and Swap*) in bytes from /proc/meminfo."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def parse_proc_io(text: str) -> int | None:
    """write_bytes of /proc/PID/io: bytes this process caused to be written to storage."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "write_bytes" and value.strip().isdigit():
            return int(value.strip())
    return None


@dataclass
class WriteRate:
    """Bytes written to storage per hour, over the last hour of samples (SD cards wear out: this
    is the number to watch), and per telemetry record stored in that time against the records' own
    bytes (what the modules sent). Samples are (monotonic seconds, cumulative write_bytes,
    cumulative records stored, cumulative bytes of those records)."""

    window_s: float = WRITE_RATE_WINDOW_S
    samples: deque[tuple[float, int, int, int]] = field(default_factory=deque)
    first: tuple[float, int] | None = None

    def add(self, now: float, total: int, records: int = 0, record_bytes: int = 0) -> None:
        if self.samples and (total < self.samples[-1][1] or records < self.samples[-1][2]):
            self.samples.clear()  # a counter that went back: start over
            self.first = None
        if self.first is None:
            self.first = (now, total)
        self.samples.append((now, total, records, record_bytes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def figures(self) -> dict[str, Any] | None:
        """bytesPerHour over windowS seconds (once the samples span MIN_RATE_WINDOW_S), and bytes
        since the first sample; with telemetry records stored in the window, bytesPerRecord and
        timesRecordBytes (bytes written over the records' own bytes). None before two samples are
        apart in time."""
        if len(self.samples) < 2 or self.first is None:
            return None
        (t0, b0, r0, rb0), (t1, b1, r1, rb1) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        out: dict[str, Any] = {"windowS": round(t1 - t0), "sinceStartBytes": b1 - self.first[1]}
        if t1 - t0 >= MIN_RATE_WINDOW_S:
            out["bytesPerHour"] = round((b1 - b0) * 3600 / (t1 - t0))
            if r1 > r0 and rb1 > rb0:
                out["records"] = r1 - r0
                out["recordBytesPerHour"] = round((rb1 - rb0) * 3600 / (t1 - t0))
                out["bytesPerRecord"] = round((b1 - b0) / (r1 - r0))
                out["timesRecordBytes"] = round((b1 - b0) / (rb1 - rb0), 2)
        return out


def module_stats(stats: Iterable[Mapping[str, Any]], names: Mapping[str, str],
                 previous: Mapping[str, tuple[float, int]], now: float) -> dict[str, dict[str, Any]]:
    """Per module: memory (bytes, limit) and CPU from libpod's stats entries (ContainerID, CPUNano,
    MemUsage, MemLimit). `names` maps container id -> module; `previous` holds each module's last
    (time, CPUNano), so cpuPercent is over the interval since then (of one core; 200 = two cores
    busy) and absent at the first sample."""
    out: dict[str, dict[str, Any]] = {}
    for entry in stats:
        module = names.get(str(entry.get("ContainerID", "")))
        if module is None:
            continue
        figures: dict[str, Any] = {}
        mem, limit, cpu = entry.get("MemUsage"), entry.get("MemLimit"), entry.get("CPUNano")
        if isinstance(mem, int) and mem >= 0:
            figures["memoryBytes"] = mem
        if isinstance(limit, int) and 0 < limit < 1 << 62:
            figures["memoryLimitBytes"] = limit
        if isinstance(cpu, int) and cpu >= 0:
            figures["cpuSeconds"] = round(cpu / 1e9, 3)
            before = previous.get(module)
            if before is not None and now > before[0] and cpu >= before[1]:
                figures["cpuPercent"] = round((cpu - before[1]) / 1e9 / (now - before[0]) * 100, 1)
        out[module] = figures
    return out


# --------------------------------------------------------------------------- readers


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def read_temperature(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """({"celsius", "zone"}, None) or (None, why it is absent)."""
    base = root / THERMAL_DIR
    try:
        dirs = sorted(p for p in base.iterdir() if p.name.startswith("thermal_zone"))
    except OSError:
        return None, f"no {base}"
    zones = [(d.name, _read(d / "type") or "", _read(d / "temp") or "") for d in dirs]
    found = parse_thermal_zones(zones)
    if found is None:
        return None, f"no thermal zone with a reading under {base}" if dirs else f"no thermal zone under {base}"
    return {"celsius": round(found[1], 1), "zone": found[0]}, None


def read_throttled(root: Path, vcgencmd: str | None = "vcgencmd") -> tuple[dict[str, Any] | None, str | None]:
    """The Pi firmware's throttling flags: the sysfs file first, then `vcgencmd get_throttled`."""
    text = _read(root / GET_THROTTLED_SYSFS)
    source = "sysfs"
    if text is None and vcgencmd and shutil.which(vcgencmd):
        try:
            done = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5)
            text, source = (done.stdout if done.returncode == 0 else None), "vcgencmd"
        except (OSError, subprocess.TimeoutExpired):
            text = None
    if text is None:
        return None, "no firmware get_throttled (not a Raspberry Pi, or its firmware driver is not loaded)"
    try:
        flags = throttle_flags(parse_throttled(text))
    except ValueError as exc:
        return None, f"{source}: {exc}"
    return {**flags, "source": source}, None


def read_memory(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    text = _read(root / "proc/meminfo")
    info = parse_meminfo(text or "")
    if "MemTotal" not in info:
        return None, f"no {root / 'proc/meminfo'}"
    out = {"totalBytes": info["MemTotal"]}
    if "MemAvailable" in info:
        out["availableBytes"] = info["MemAvailable"]
    if info.get("SwapTotal"):
        out["swapTotalBytes"] = info["SwapTotal"]
        out["swapFreeBytes"] = info.get("SwapFree", 0)
    return out, None


def read_disk(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    used_percent = round(100 * (usage.total - usage.free) / usage.total, 1) if usage.total else 100.0
    return {"path": str(path), "totalBytes": usage.total, "freeBytes": usage.free, "usedPercent": used_percent}, None


def read_write_bytes(root: Path, pid: str = "self") -> int | None:
    text = _read(root / "proc" / pid / "io")
    return parse_proc_io(text) if text is not None else None


@dataclass
class HealthSampler:
    """Takes one health sample (blocking: call it off the event loop). Keeps what a rate needs
    between samples (the agent's write counter, each module's CPU time)."""

    root: Path = Path("/")
    state_dir: Path = Path("/var/lib/edge-agent")
    vcgencmd: str | None = "vcgencmd"
    writes: WriteRate = field(default_factory=WriteRate)
    _cpu: dict[str, tuple[float, int]] = field(default_factory=dict)

    def sample(self, modules: ModuleStatsResult | None = None, now: float | None = None,
               records: tuple[int, int] = (0, 0)) -> dict[str, Any]:
        """`records`: telemetry records stored since the agent started, and their own bytes."""
        now = time.monotonic() if now is None else now
        section: dict[str, Any] = {}
        absent: dict[str, str] = {}
        for key, (value, why) in (
            ("cpuTemperature", read_temperature(self.root)),
            ("throttling", read_throttled(self.root, self.vcgencmd)),
            ("memory", read_memory(self.root)),
            ("disk", read_disk(self.state_dir)),
        ):
            if value is not None:
                section[key] = value
            else:
                absent[key] = why or "unknown"
        written = read_write_bytes(self.root)
        if written is None:
            absent["storageWrites"] = "no write_bytes in /proc/self/io (kernel without task I/O accounting)"
        else:
            self.writes.add(now, written, *records)
            figures = self.writes.figures()
            if figures is None:
                absent["storageWrites"] = "needs a second sample"
            else:
                section["storageWrites"] = figures
        if modules is not None:
            if modules.error is not None:
                absent["modules"] = modules.error
            else:
                section["modules"] = module_stats(modules.stats, modules.names, self._cpu, now)
                total = (section.get("memory") or {}).get("totalBytes")
                for figures in section["modules"].values():  # "limited" to all memory: no limit
                    if total is not None and figures.get("memoryLimitBytes", 0) >= total:
                        del figures["memoryLimitBytes"]
                self._cpu = {m: (now, e["CPUNano"]) for e in modules.stats
                             if (m := modules.names.get(str(e.get("ContainerID", "")))) is not None
                             and isinstance(e.get("CPUNano"), int)}
        if absent:
            section["absent"] = absent
        return section


@dataclass(frozen=True)
class ModuleStatsResult:
    """libpod stats entries and container id -> module, or why there are none."""

    stats: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    error: str | None = None
