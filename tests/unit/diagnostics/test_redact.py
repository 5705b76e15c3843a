"""Redaction: by value (secrets the device knows), by name (password = ..., "token": ...), by shape
(PEM private keys); the config file re-emitted without comments and with secret-named values
replaced, also when it is not valid TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.diagnostics.redact import (
    REDACTED,
    Scrubber,
    config_secret_values,
    container_secret_values,
    environment_secret_values,
    redact_config_text,
)

KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\nAAAA\n-----END PRIVATE KEY-----\n"


def test_known_values_names_and_pem_blocks() -> None:
    scrub = Scrubber(["hunter2-very-secret", "short"])
    text = ("connecting with hunter2-very-secret\npassword=abc123def token: xyz789 api_key='k-1'\n"
            f"{KEY}tail\nshort words stay")
    out = scrub.text(text)
    assert "hunter2-very-secret" not in out and "abc123def" not in out and "xyz789" not in out
    assert "k-1" not in out and "MIGHAgEA" not in out
    assert out.endswith("tail\nshort words stay")  # under 6 characters a value is not a secret
    assert f"password={REDACTED}" in out
    # a secret reference names where the secret is: it stays readable
    assert Scrubber().text('password = "env:MQTT_PASSWORD"') == 'password = "env:MQTT_PASSWORD"'


def test_config_secrets_are_found(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "pw").write_text("file-secret-123\n")
    (tmp_path / "client.key").write_text(KEY)
    (tmp_path / "client.crt").write_text("cert")
    monkeypatch.setenv("MQTT_PASS", "env-secret-456")
    config = parse_config(
        f'[mqtt]\ntls = true\nusername = "dev"\npassword = "env:MQTT_PASS"\ncert_file = "{tmp_path}/client.crt"\n'
        f'key_file = "{tmp_path}/client.key"\n'
        f'[[trust.registry_auth]]\nregistry = "reg.local"\nusername = "u"\npassword = "file:{tmp_path}/pw"\n'
    )
    values = config_secret_values(config)
    assert "env-secret-456" in values and "file-secret-123" in values
    assert "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg" in values  # each key line on its own


def test_environment_and_container_values(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("credential-secret-789")
    env = {"API_TOKEN": "tok-123456", "HOME": "/root", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    values = environment_secret_values(env)
    assert "tok-123456" in values and "credential-secret-789" in values and "/root" not in values
    assert container_secret_values([["DB_PASSWORD=pw-in-module", "PATH=/bin"], ["=odd", "X"]]) == ["pw-in-module"]


def test_config_file_is_emitted_without_comments_and_secrets() -> None:
    text = (
        '# my old password was hunter2-in-a-comment\n[device]\nid = "rover-01"\nlabels = {site = "turin"}\n'
        '[mqtt]\nhost = "broker"  # inline comment\npassword = "env:MQTT_PASS"\nsecret_thing = "plain-secret-value"\n'
        '[[trust.registry_auth]]\nregistry = "r"\nusername = "u"\npassword = "file:/etc/pw"\n'
        '[telemetry.streams."pilot.alerts"]\npriority = 0\n'
    )
    out = redact_config_text(text, Scrubber())
    doc = tomllib.loads(out)  # still TOML
    assert "hunter2" not in out and "inline comment" not in out and "plain-secret-value" not in out
    assert doc["mqtt"]["host"] == "broker" and doc["mqtt"]["password"] == "env:MQTT_PASS"
    assert doc["mqtt"]["secret_thing"] == REDACTED
    assert doc["trust"]["registry_auth"][0]["password"] == "file:/etc/pw"
    assert doc["telemetry"]["streams"]["pilot.alerts"]["priority"] == 0
    assert doc["device"]["labels"] == {"site": "turin"}


def test_a_broken_config_file_is_redacted_line_by_line() -> None:
    text = '[mqtt\npassword = "literal-pass-1"\n# comment-secret\nhost = "b"\n'
    out = redact_config_text(text, Scrubber(["b-not-secret"]))
    assert "literal-pass-1" not in out and "comment-secret" not in out and 'host = "b"' in out
    assert out.startswith("# not valid TOML")
