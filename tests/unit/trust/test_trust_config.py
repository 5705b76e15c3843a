"""[trust] config section and the `edge-agent check` trust line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.checks import check_trust
from edge_agent.config import ConfigError, parse_config
from edge_agent.desired.manager import document_trust
from edge_agent.trust.factory import scope_policies
from edge_shared.trust import keys

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cosign"


def write_keys(tmp_path: Path) -> None:
    for name in ("a", "b"):
        priv = keys.generate_private_key()
        (tmp_path / f"{name}.pub").write_bytes(keys.public_key_pem(priv.public_key()))


def config(tmp_path: Path, trust: str) -> object:
    text = f'[state]\ndir = "{tmp_path / "state"}"\n[trust]\n{trust}'
    return parse_config(text, "config.toml", base_dir=tmp_path)


def test_policy_with_relative_key_paths_and_check_shows_keys(tmp_path: Path) -> None:
    write_keys(tmp_path)
    cfg = config(
        tmp_path,
        """document_keys = ["a.pub"]
[[trust.policy]]
scope = "registry.example.com/fleet"
keys = ["a.pub", "b.pub"]
required_annotations = { env = "prod" }
""",
    )
    policies = scope_policies(cfg.trust)  # type: ignore[attr-defined]
    assert len(policies[0].keys) == 2
    result = check_trust(cfg)  # type: ignore[arg-type]
    assert result.outcome == "pass"
    for k in policies[0].keys:
        assert k.short_id in result.detail and str(tmp_path / "a.pub") in result.detail
    assert "registry.example.com/fleet: enforce" in result.detail and "env" in result.detail


def test_off_must_be_explicit_and_enforce_needs_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, '[[trust.policy]]\nscope = "*"\n')
    assert 'write mode = "off"' in str(info.value) and "config.toml:4" in str(info.value)
    cfg = config(tmp_path, 'document_mode = "off"\n[[trust.policy]]\nscope = "*"\nmode = "off"\n')
    assert check_trust(cfg).outcome == "warn"  # type: ignore[arg-type]


def test_check_warns_without_policy_or_document_keys(tmp_path: Path) -> None:
    write_keys(tmp_path)
    empty = check_trust(config(tmp_path, ""))  # type: ignore[arg-type]
    assert empty.outcome == "warn" and "every image will be refused" in empty.detail
    cfg = config(tmp_path, '[[trust.policy]]\nscope = "*"\nkeys = ["a.pub"]\n')
    result = check_trust(cfg)  # type: ignore[arg-type]
    assert result.outcome == "warn" and "document_keys" in result.detail
    (tmp_path / "a.pub").write_text("garbage")  # a key file that became unusable after loading
    assert check_trust(cfg).outcome == "fail"  # type: ignore[arg-type]


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    for trust, needle in [
        ('insecure_registries = ["registry.example.com:5000"]', "not a loopback"),
        ('[[trust.policy]]\nscope = "*"\nkeys = ["missing.pub"]', "does not exist"),
        (f'[[trust.policy]]\nscope = "*"\nkeys = ["{FIX / "cosign-n32768.key"}"]', "not a PEM PUBLIC KEY"),
        ('[[trust.policy]]\nscope = "*"\nmode = "maybe"', "enforce (refuse"),
        ('[[trust.registry_auth]]\nregistry = "r.example"\nusername = "u"\npassword = "hunter2"', "secrets are not"),
    ]:
        with pytest.raises(ConfigError) as info:
            config(tmp_path, trust)
        assert needle in str(info.value), (trust, str(info.value))
        assert "hunter2" not in str(info.value)


def test_document_gate_from_config(tmp_path: Path) -> None:
    write_keys(tmp_path)
    cfg = config(tmp_path, 'document_keys = ["a.pub", "b.pub"]')
    trust = document_trust(cfg, ())  # type: ignore[arg-type]
    assert trust.mode == "enforce" and not trust.require_expires
    assert sorted(k.source for k in trust.keys) == [str(tmp_path / "a.pub"), str(tmp_path / "b.pub")]
    rotated = (keys.parse_public_key(keys.public_key_pem(keys.generate_private_key().public_key()), "state.db"),)
    assert document_trust(cfg, rotated).keys == rotated  # a signed rotation wins over the config's keys
