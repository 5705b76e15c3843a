"""The [telemetry] config section: defaults, overrides and clear errors."""

from __future__ import annotations

import pytest

from edge_agent.config import ConfigError, load_config, parse_config


def test_shipped_config_has_the_telemetry_defaults(repo_root) -> None:  # type: ignore[no-untyped-def]
    section = load_config(repo_root / "config/config.toml").telemetry
    assert section.cap_bytes == 64 * 1024 * 1024 and section.synchronous == "full"
    assert section.default_policy == "drop-oldest" and section.streams == {}


def test_stream_overrides() -> None:
    cfg = parse_config('[telemetry.streams."pilot.alerts"]\npriority = 0\npolicy = "refuse-new"\nttl_s = 60\n')
    alerts = cfg.telemetry.streams["pilot.alerts"]
    assert (alerts.priority, alerts.policy, alerts.ttl_s) == (0, "refuse-new", 60)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[telemetry]\ncap_bytes = 10\n", "cf.toml:2: telemetry.cap_bytes: got 10; expected bytes of queued records"),
        ('[telemetry]\ndefault_policy = "drop-newest"\n', "telemetry.default_policy: got 'drop-newest'; expected "
         "drop-oldest or refuse-new"),
        ('[telemetry.streams."Bad Name"]\npriority = 1\n', "telemetry.streams.Bad Name"),
        ("[telemetry.streams.ok]\npriority = 10\n", "streams.ok.priority: got 10; should be less than or equal to 9"),
        ('[telemetry]\nmodules = ["../evil"]\n', "telemetry.modules.0"),
        ('[telemetry]\nsynchronous = "off"\n', "expected full (an acknowledged record survives a power cut)"),
        ("[telemetry]\ncap_byte = 1\n", "unknown key, did you mean telemetry.cap_bytes?"),
    ],
)
def test_bad_values_are_named(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "cf.toml")
    assert needle in str(err.value), str(err.value)
