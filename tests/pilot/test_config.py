"""Config files: the shipped profiles validate; bad input names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_pilot.config import ConfigError, load_config

from .conftest import PILOT_DIR, REPO


def test_shipped_profiles_validate() -> None:
    pi4 = load_config(REPO / "hardware" / "pi4" / "pilot.json")
    assert pi4.source.kind == "v4l2" and pi4.actuator.kind == "pca9685"
    assert pi4.actuator.calibration.frequency == 60 and pi4.actuator.calibration.address == 0x40
    sim = load_config(PILOT_DIR / "config" / "sim.json")
    assert sim.source.kind == "sim" and sim.loop.hz == 20


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"loop": {"hz": -1}, "actuator": {"calibration": {"throttle_channel": 16}}}')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert (
        "loop.hz" in str(e.value) and "actuator.calibration.throttle_channel" in str(e.value) and str(p) in str(e.value)
    )
    p.write_text('{"sourse": {}}')
    with pytest.raises(ConfigError, match="sourse"):
        load_config(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(p)


def test_toml_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[loop]\nhz = 10\n[ort]\nintra_threads = 1\n")
    c = load_config(p)
    assert c.loop.hz == 10 and c.ort.intra_threads == 1
