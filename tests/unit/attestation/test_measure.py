from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.attestation.measure import ImageMeasurer, read_log
from edge_shared.attestation import ZERO_PCR, canonical_event, event_digest, replay_image_log
from tests.fakes.tpm import FakeTpm

D1 = "sha256:" + "11" * 32
D2 = "sha256:" + "22" * 32


async def test_extend_logs_then_replay_reproduces_the_pcr(tmp_path: Path) -> None:
    tpm = FakeTpm()
    measurer = ImageMeasurer(tpm, tmp_path, pcr=23)
    await measurer.load()
    await measurer.extend(D1, "pilot", 4)
    await measurer.extend(D2, "camera", "4")
    events = read_log(measurer.path)
    assert [e["module"] for e in events] == ["pilot", "camera"] and events[0]["deployment"] == "4"
    assert replay_image_log(events) == tpm.pcrs[23]
    assert oct(measurer.path.stat().st_mode & 0o777) == "0o600"


def test_canonical_event_is_stable_and_strict() -> None:
    a = {"seq": 0, "module": "m", "digest": D1, "deployment": "1", "time": "t"}
    b = dict(reversed(list(a.items())))
    assert canonical_event(a) == canonical_event(b) and event_digest(a) == event_digest(b)
    with pytest.raises(ValueError, match="unknown fields: extra"):
        canonical_event({**a, "extra": 1})


async def test_bad_digest_is_refused_and_nothing_is_measured(tmp_path: Path) -> None:
    tpm = FakeTpm()
    measurer = ImageMeasurer(tpm, tmp_path)
    await measurer.load()
    with pytest.raises(ValueError, match="module pilot: image digest"):
        await measurer.extend("sha256:1234", "pilot", 1)
    assert tpm.pcrs[23] == ZERO_PCR and not measurer.path.exists()


async def test_restart_keeps_the_log_and_a_crash_between_log_and_extend_is_finished(tmp_path: Path) -> None:
    tpm = FakeTpm()
    first = ImageMeasurer(tpm, tmp_path)
    await first.load()
    await first.extend(D1, "pilot", 1)
    # Simulate a crash after the log line was written but before the PCR extend.
    event = {"seq": 1, "module": "camera", "digest": D2, "deployment": "1", "time": "t"}
    with first.path.open("ab") as f:
        f.write(canonical_event(event) + b"\n")
    second = ImageMeasurer(tpm, tmp_path)
    await second.load()
    assert second.consistent and len(second.events) == 2
    assert replay_image_log(second.events) == tpm.pcrs[23]


async def test_reboot_starts_a_new_log_and_foreign_extends_are_flagged(tmp_path: Path) -> None:
    tpm = FakeTpm()
    m = ImageMeasurer(tpm, tmp_path)
    await m.load()
    await m.extend(D1, "pilot", 1)
    tpm.pcrs[23] = ZERO_PCR  # reboot
    after = ImageMeasurer(tpm, tmp_path)
    await after.load()
    assert after.events == [] and after.consistent
    assert json.loads(tmp_path.joinpath("image-measurements.prev.jsonl").read_text())["digest"] == D1
    tpm.pcr_extend(23, b"\x05" * 32)  # someone else extends the PCR
    third = ImageMeasurer(tpm, tmp_path)
    await third.load()
    assert not third.consistent


def test_broken_log_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"seq": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON event"):
        read_log(path)


async def test_damaged_log_is_kept_aside_and_reported_inconsistent(tmp_path: Path) -> None:
    tpm = FakeTpm()
    m = ImageMeasurer(tpm, tmp_path)
    await m.load()
    await m.extend(D1, "pilot", 1)
    m.path.write_text("{broken\n")
    again = ImageMeasurer(tpm, tmp_path)
    await again.load()
    assert again.events == [] and not again.consistent
    kept = list(tmp_path.glob("image-measurements.corrupt-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == "{broken\n"
