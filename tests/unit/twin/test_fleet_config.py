"""edgectl's config file and flag overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgectl.cli import main
from edgectl.config import FleetConfigError, fleet_client_id, load_fleet_config


def test_file_relative_paths_and_flag_overrides(tmp_path: Path) -> None:
    for name in ("ca.crt", "ops.crt", "ops.key"):
        (tmp_path / name).write_text("x")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[mqtt]\nhost = "broker.example"\nport = 8883\ntopic_prefix = "acme"\ntls = true\n'
        'ca_file = "ca.crt"\ncert_file = "ops.crt"\nkey_file = "ops.key"\nclient_id = "ops"\n'
    )
    config = load_fleet_config(cfg, {"host": None})
    assert config.mqtt.host == "broker.example" and config.mqtt.ca_file == tmp_path / "ca.crt"
    config = load_fleet_config(cfg, {"host": "127.0.0.1", "port": 1884})
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic_prefix) == ("127.0.0.1", 1884, "acme")
    a, b = fleet_client_id(config), fleet_client_id(config)
    assert a.startswith("ops-") and a != b


def test_missing_default_file_is_fine_but_explicit_one_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECTL_CONFIG", str(tmp_path / "absent.toml"))
    assert load_fleet_config(None, {}).mqtt.host == "localhost"
    with pytest.raises(FleetConfigError, match="cannot read"):
        load_fleet_config(tmp_path / "absent.toml", {})


def test_bad_file_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[mqtt]\nport = 70000\nhots = "x"\n')
    with pytest.raises(FleetConfigError) as info:
        load_fleet_config(cfg, {})
    text = str(info.value)
    assert f"{cfg}: mqtt.port:" in text and f"{cfg}: mqtt.hots: unknown key" in text


def test_deploy_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "only-one-arg"]) == 2
    manifest = tmp_path / "m.json"
    manifest.write_text('{"no_modules": 1}')
    assert main(["deploy", "dev", str(manifest)]) == 2
    assert "modules: expected a table/object" in capsys.readouterr().err


def test_device_id_fleet_is_reserved() -> None:
    from edge_agent.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="device id fleet is reserved"):
        parse_config('[device]\nid = "fleet"\n', "config.toml")
