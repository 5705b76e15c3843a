"""Health figures: the pure parsers bit by bit, a Raspberry Pi 4 as a fake sysfs/procfs tree, a PC
tree without the Pi's firmware (reported absent, never invented), and this machine for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.diagnostics.health import (
    THROTTLE_BITS,
    HealthSampler,
    ModuleStatsResult,
    WriteRate,
    module_stats,
    parse_meminfo,
    parse_proc_io,
    parse_thermal_zones,
    parse_throttled,
    read_temperature,
    throttle_flags,
)
from edge_agent.diagnostics.health_check import health_results
from edge_shared.health_view import health_lines

PI_MEMINFO = "MemTotal:        3885252 kB\nMemFree:          301612 kB\nMemAvailable:    2913340 kB\n" \
             "SwapTotal:        102396 kB\nSwapFree:         102396 kB\n"
PI_IO = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: {}\ncancelled_write_bytes: 0\n"


def fake_pi(root: Path, throttled: str = "50005", temp: str = "61835", write_bytes: int = 1_000_000) -> Path:
    """What a Raspberry Pi 4 (64-bit Raspberry Pi OS) shows: one thermal zone `cpu-thermal`, the
    firmware driver's get_throttled in hex digits, /proc/meminfo and /proc/self/io."""
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(temp + "\n")
    (root / "sys/class/thermal/cooling_device0").mkdir()
    fw = root / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text(throttled + "\n")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/meminfo").write_text(PI_MEMINFO)
    (root / "proc/self/io").write_text(PI_IO.format(write_bytes))
    return root


@pytest.mark.parametrize("text", ["throttled=0x50005", "50005", "0x50005\n", " throttled=0x50005 "])
def test_get_throttled_forms(text: str) -> None:
    assert parse_throttled(text) == 0x50005


@pytest.mark.parametrize("text", ["", "throttled=", "0xZZ", "throttled=0x123456789", "error=1 error_msg=..."])
def test_get_throttled_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_throttled(text)


@pytest.mark.parametrize(("bit", "name"), THROTTLE_BITS)
def test_each_throttle_bit_alone(bit: int, name: str) -> None:
    flags = throttle_flags(1 << bit)
    assert [k for k, v in flags.items() if v is True] == [name]
    assert flags["raw"] == f"0x{1 << bit:x}"


def test_throttle_value_of_a_pi_with_a_weak_supply() -> None:
    # 0x50005: under-voltage now and since boot, throttled now and since boot.
    flags = throttle_flags(0x50005)
    assert flags["underVoltageNow"] and flags["throttledNow"]
    assert flags["underVoltageOccurred"] and flags["throttledOccurred"]
    assert not flags["frequencyCappedNow"] and not flags["softTempLimitOccurred"]
    assert throttle_flags(0)["raw"] == "0x0" and not any(v is True for v in throttle_flags(0).values())


def test_thermal_zone_choice() -> None:
    assert parse_thermal_zones([("thermal_zone0", "acpitz", "27800"), ("thermal_zone1", "x86_pkg_temp", "45000")]) \
        == ("x86_pkg_temp", 45.0)
    assert parse_thermal_zones([("thermal_zone3", "acpitz", "30000"), ("thermal_zone1", "iwlwifi", "41000")]) \
        == ("iwlwifi", 41.0)  # no CPU zone: the lowest-numbered zone with a reading
    # unreadable and impossible readings are skipped, never reported
    assert parse_thermal_zones([("thermal_zone0", "cpu-thermal", "")]) is None
    assert parse_thermal_zones([("thermal_zone0", "cpu-thermal", "-274000")]) is None
    assert parse_thermal_zones([]) is None


def test_meminfo_and_proc_io() -> None:
    assert parse_meminfo(PI_MEMINFO) == {"MemTotal": 3885252 * 1024, "MemAvailable": 2913340 * 1024,
                                         "SwapTotal": 102396 * 1024, "SwapFree": 102396 * 1024}
    assert parse_proc_io(PI_IO.format(123)) == 123
    assert parse_proc_io("rchar: 1\n") is None


def test_write_rate_over_the_last_hour() -> None:
    rate = WriteRate()
    rate.add(0.0, 1000)
    assert rate.figures() is None  # one sample is no rate
    rate.add(30.0, 1000 + 4000)
    assert rate.figures() == {"windowS": 30, "sinceStartBytes": 4000}  # too short a time for a rate
    rate.add(1800.0, 1000 + 50_000)
    assert rate.figures() == {"bytesPerHour": 100_000, "windowS": 1800, "sinceStartBytes": 50_000}
    for t in range(2, 10):
        rate.add(t * 1800.0, 1000 + 50_000 * t + (t >= 8) * 900_000)  # a burst at the end
    figures = rate.figures()
    assert figures is not None and figures["windowS"] <= 3600 + 1800
    assert figures["bytesPerHour"] > 100_000 and figures["sinceStartBytes"] == 50_000 * 9 + 900_000
    rate.add(20_000.0, 10)  # the counter went back (a new process): start over, no negative rate
    assert rate.figures() is None


def test_module_stats_cpu_over_the_interval() -> None:
    names = {"c1": "detector", "c2": "camera"}
    first = [{"ContainerID": "c1", "CPUNano": 2_000_000_000, "MemUsage": 50_000_000, "MemLimit": 268_435_456},
             {"ContainerID": "c2", "CPUNano": 0, "MemUsage": 1000, "MemLimit": 1 << 63},
             {"ContainerID": "other", "CPUNano": 1, "MemUsage": 1}]
    out = module_stats(first, names, {}, now=100.0)
    assert out == {"detector": {"memoryBytes": 50_000_000, "memoryLimitBytes": 268_435_456, "cpuSeconds": 2.0},
                   "camera": {"memoryBytes": 1000, "cpuSeconds": 0.0}}  # no limit: podman's huge number is not one
    later = [{"ContainerID": "c1", "CPUNano": 7_000_000_000, "MemUsage": 51_000_000, "MemLimit": 268_435_456}]
    assert module_stats(later, names, {"detector": (100.0, 2_000_000_000)}, now=110.0)["detector"]["cpuPercent"] == 50.0


def test_a_raspberry_pi_tree(tmp_path: Path) -> None:
    root = fake_pi(tmp_path / "pi")
    sampler = HealthSampler(root=root, state_dir=tmp_path, vcgencmd=None)
    modules = ModuleStatsResult(stats=[{"ContainerID": "c1", "CPUNano": 10**9, "MemUsage": 42 << 20,
                                        "MemLimit": 256 << 20},
                                       {"ContainerID": "c2", "CPUNano": 0, "MemUsage": 1 << 20,
                                        "MemLimit": 3885252 * 1024}], names={"c1": "detector", "c2": "camera"})
    first = sampler.sample(modules, now=0.0)
    assert first["cpuTemperature"] == {"celsius": 61.8, "zone": "cpu-thermal"}
    assert first["throttling"]["underVoltageNow"] is True and first["throttling"]["source"] == "sysfs"
    assert first["memory"] == {"totalBytes": 3885252 * 1024, "availableBytes": 2913340 * 1024,
                               "swapTotalBytes": 102396 * 1024, "swapFreeBytes": 102396 * 1024}
    assert first["disk"]["path"] == str(tmp_path) and first["disk"]["totalBytes"] > 0
    assert first["absent"] == {"storageWrites": "needs a second sample"}
    assert first["modules"] == {"detector": {"memoryBytes": 42 << 20, "memoryLimitBytes": 256 << 20, "cpuSeconds": 1.0},
                                "camera": {"memoryBytes": 1 << 20, "cpuSeconds": 0.0}}  # no limit: all the memory
    (root / "proc/self/io").write_text(PI_IO.format(1_000_000 + 36_000))
    modules2 = ModuleStatsResult(stats=[{"ContainerID": "c1", "CPUNano": 3 * 10**9, "MemUsage": 43 << 20,
                                         "MemLimit": 256 << 20}], names={"c1": "detector"})
    second = sampler.sample(modules2, now=60.0)
    assert second["storageWrites"] == {"bytesPerHour": 2_160_000, "windowS": 60, "sinceStartBytes": 36_000}
    assert "agent writes 2.1 MiB/h (over 60 s)" in "\n".join(health_lines(second))
    assert second["modules"]["detector"]["cpuPercent"] == pytest.approx(3.3, abs=0.05)
    assert "absent" not in second

    results = {r.name: r for r in health_results(second)}
    assert results["power and throttling"].outcome == "warn"
    assert "UNDER-VOLTAGE now" in results["power and throttling"].detail
    assert "power supply" in results["power and throttling"].hint
    assert results["CPU temperature"].outcome == "pass"
    text = "\n".join(health_lines(second))
    assert "CPU 61.8 °C (cpu-thermal)" in text and "NOW: underVoltage, throttled" in text
    assert "detector: CPU 3.3%" in text


def test_a_healthy_pi_passes_and_a_hot_one_warns(tmp_path: Path) -> None:
    calm = HealthSampler(root=fake_pi(tmp_path / "calm", throttled="0", temp="48000"), state_dir=tmp_path,
                         vcgencmd=None).sample()
    assert [r.outcome for r in health_results(calm)[:2]] == ["pass", "pass"]
    hot = HealthSampler(root=fake_pi(tmp_path / "hot", throttled="80008", temp="83000"), state_dir=tmp_path,
                        vcgencmd=None).sample()
    power, temp, _ = health_results(hot)
    assert power.outcome == "warn" and "soft temperature limit active now" in power.detail and "cooling" in power.hint
    assert temp.outcome == "warn" and "83.0" in temp.detail


def test_a_nearly_full_disk_warns() -> None:
    sample = {"disk": {"path": "/var/lib/edge-agent", "totalBytes": 100, "freeBytes": 4, "usedPercent": 96.0}}
    disk = health_results(sample)[2]
    assert disk.outcome == "warn" and "96.0% used" in disk.detail
    assert health_results({"disk": {**sample["disk"], "usedPercent": 50.0}})[2].outcome == "pass"


def test_vcgencmd_when_there_is_no_sysfs_file(tmp_path: Path) -> None:
    tool = tmp_path / "vcgencmd"
    tool.write_text("#!/bin/sh\n[ \"$1\" = get_throttled ] && echo throttled=0x20002\n")
    tool.chmod(0o755)
    sample = HealthSampler(root=tmp_path / "empty", state_dir=tmp_path, vcgencmd=str(tool)).sample()
    assert sample["throttling"]["frequencyCappedNow"] and sample["throttling"]["source"] == "vcgencmd"


def test_a_pc_without_pi_firmware_reports_absent(tmp_path: Path) -> None:
    root = tmp_path / "pc"
    (root / "sys/class/thermal").mkdir(parents=True)  # a VM: the folder exists, no zone in it
    sample = HealthSampler(root=root, state_dir=tmp_path, vcgencmd=None).sample()
    assert set(sample["absent"]) == {"cpuTemperature", "throttling", "memory", "storageWrites"}
    assert "not a Raspberry Pi" in sample["absent"]["throttling"]
    assert "cpuTemperature" not in sample and "throttling" not in sample
    power, temp, _ = health_results(sample)
    assert (power.outcome, temp.outcome) == ("pass", "pass") and "not measured here" in power.detail
    assert "CPU temperature ABSENT" in "\n".join(health_lines(sample))


def test_this_machine(tmp_path: Path) -> None:
    """The real readers on this machine: memory and disk are always there; the temperature is
    there exactly when /sys/class/thermal has a zone with a reading; write_bytes when the kernel
    counts task I/O."""
    sampler = HealthSampler(state_dir=tmp_path)
    sampler.sample(now=0.0)
    with open(tmp_path / "written", "wb") as f:  # make this process write something to storage
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    sample = sampler.sample(now=10.0)
    assert sample["memory"]["totalBytes"] > sample["memory"]["availableBytes"] > 0
    assert sample["disk"]["totalBytes"] >= sample["disk"]["freeBytes"] > 0
    temp, why = read_temperature(Path("/"))
    assert ("cpuTemperature" in sample) == (temp is not None)
    if temp is None:
        assert sample["absent"]["cpuTemperature"] == why
    if Path("/proc/self/io").exists():
        assert sample["storageWrites"]["sinceStartBytes"] >= 1 << 20
    import shutil

    has_fw = Path("/sys/devices/platform/soc/soc:firmware/get_throttled").exists() or shutil.which("vcgencmd")
    assert ("throttling" in sample) == bool(has_fw)
    assert ("throttling" in sample.get("absent", {})) == (not has_fw)


def test_edgectl_show_prints_health_escaped() -> None:
    import time

    from edgectl.client import DeviceView
    from edgectl.show import render_view

    health = {"cpuTemperature": {"celsius": 70.2, "zone": "cpu-thermal\x1b[2J"},
              "modules": {"pilot\x1b]0;pwned\x07": {"cpuPercent": 12.5, "memoryBytes": 1 << 20}}}
    text = render_view(DeviceView("rover-01", reported={"ts": time.time(), "health": health}), color=False,
                       now=time.time())
    assert "CPU 70.2 °C (cpu-thermal\\x1b[2J)" in text and "\x1b" not in text and "\x07" not in text
    assert "throttling ABSENT" in text and "CPU 12.5%" in text


def test_storage_writes_per_telemetry_record_against_the_records_own_bytes(tmp_path: Path) -> None:
    root = fake_pi(tmp_path)
    sampler = HealthSampler(root=root, state_dir=tmp_path, vcgencmd=None)
    (root / "proc/self/io").write_text(PI_IO.format(1_000_000))
    sampler.sample(now=0.0, records=(10, 7_000))
    (root / "proc/self/io").write_text(PI_IO.format(1_000_000 + 600_000))
    second = sampler.sample(now=120.0, records=(130, 7_000 + 120 * 750))  # 120 records of 750 bytes
    assert second["storageWrites"] == {"bytesPerHour": 18_000_000, "windowS": 120, "sinceStartBytes": 600_000,
                                       "records": 120, "recordBytesPerHour": 2_700_000, "bytesPerRecord": 5000,
                                       "timesRecordBytes": 6.67}
    text = "\n".join(health_lines(second))
    assert "4.9 KiB per telemetry record stored (6.67x the records' own bytes, 120 records)" in text


def test_no_per_record_figure_without_records_in_the_window(tmp_path: Path) -> None:
    root = fake_pi(tmp_path)
    sampler = HealthSampler(root=root, state_dir=tmp_path, vcgencmd=None)
    sampler.sample(now=0.0, records=(5, 500))
    second = sampler.sample(now=120.0, records=(5, 500))
    assert "bytesPerRecord" not in second["storageWrites"] and "per telemetry record" not in "\n".join(
        health_lines(second))
