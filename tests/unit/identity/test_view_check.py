"""The identity in `edge-agent status`, `edgectl devices` and `edge-agent check`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.config import AgentConfig
from edge_agent.identity.check import check_identity
from edge_shared.identity_view import expiry_cell, identity_lines
from edgectl.enrollment.ca import FleetCa, cert_pem

NOW = dt.datetime.now(dt.UTC)


def section(state: str = "valid", hours: float = 48, **extra: object) -> dict[str, object]:
    return {"state": state, "subject": "CN=dev", "notAfter": (NOW + dt.timedelta(hours=hours)).isoformat(),
            "renewAt": (NOW + dt.timedelta(hours=hours / 2)).isoformat(), "renewals": 3, "keyStorage": "tpm-sealed",
            "clock": "synchronised", "detail": "", **extra}


def test_status_lines() -> None:
    lines = identity_lines(section())
    assert lines[0].startswith("identity    CN=dev: valid, expires ") and "renews at" in lines[0]
    assert lines[1].strip() == "3 renewals; key tpm-sealed"
    waiting = identity_lines({"state": "pending", "detail": "waiting for approval; edgectl enrollments approve dev",
                              "renewals": 0, "keyStorage": "file", "clock": "synchronised"})
    assert "(no certificate yet): waiting for approval" in waiting[0] and "enrollments approve dev" in waiting[1]
    wrong = identity_lines(section("clock-unsynchronised", clock="clock not synchronised: the clock is ahead"))
    assert "clock not synchronised" in wrong[0] and "the clock is ahead" in wrong[1]
    assert identity_lines(None) == []


def test_devices_cell() -> None:
    now = NOW.timestamp()
    assert expiry_cell(section(hours=72), now) == "3d"
    assert expiry_cell(section(hours=1), now) in ("59m", "60m")
    assert expiry_cell(section(hours=1 / 60), now).endswith("s")
    assert expiry_cell(section(hours=-1), now) == "EXPIRED"
    assert expiry_cell(section("error", hours=72), now) == "3d (ERROR)"
    assert expiry_cell(None, now) == "-"
    assert expiry_cell({"state": "pending"}, now) == "pending"


def write_cert(path: Path, lifetime: dt.timedelta, age: dt.timedelta) -> None:
    ca = FleetCa.create()
    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert_pem(ca.issue_device("dev", key.public_key(), lifetime, NOW - age)))


def test_check_warns_before_expiry_and_fails_after(tmp_path: Path) -> None:
    manual = tmp_path / "dev.crt"
    config = AgentConfig.model_validate({"state": {"dir": str(tmp_path / "state")}, "mqtt": {"tls": True}})
    write_cert(manual, dt.timedelta(days=825), dt.timedelta(days=10))
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"cert_file": manual})})
    assert check_identity(config).outcome == "pass"
    write_cert(manual, dt.timedelta(days=825), dt.timedelta(days=820))
    soon = check_identity(config)
    assert soon.outcome == "warn" and "expires in 4 days" in soon.detail
    write_cert(manual, dt.timedelta(days=1), dt.timedelta(days=2))
    assert check_identity(config).outcome == "fail" and "EXPIRED" in check_identity(config).detail

    enrolled = AgentConfig.model_validate({"state": {"dir": str(tmp_path / "state")}, "mqtt": {"tls": True},
                                           "identity": {"enabled": True}})
    assert check_identity(enrolled).outcome == "warn"  # not enrolled yet
    device_crt = tmp_path / "state" / "identity" / "device.crt"
    write_cert(device_crt, dt.timedelta(days=90), dt.timedelta(days=1))
    ok = check_identity(enrolled)
    assert ok.outcome == "pass" and "renews at" in ok.detail
    write_cert(device_crt, dt.timedelta(days=90), dt.timedelta(days=80))
    overdue = check_identity(enrolled)
    assert overdue.outcome == "warn" and "renewal overdue" in overdue.detail
