"""The clock and certificate decisions (edge_agent/identity/clock.py, certs.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.identity.certs import CertFacts, decide, issued_problem
from edge_agent.identity.clock import ClockState, ClockWatch, clock_state
from edgectl.enrollment.ca import FleetCa

BUILD = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
SYNCED = ClockState(True, "ok")


def test_clock_state_signals() -> None:
    assert clock_state(NOW, build_date=BUILD, last_saved=None, timesyncd=None).synchronised
    assert clock_state(NOW, build_date=BUILD, last_saved=NOW, timesyncd=True).reason.startswith("synchronised")
    behind_build = clock_state(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), build_date=BUILD, last_saved=None,
                               timesyncd=None)
    assert not behind_build.synchronised and "before this agent was built" in behind_build.reason
    behind_saved = clock_state(NOW - dt.timedelta(days=2), build_date=BUILD, last_saved=NOW, timesyncd=None)
    assert not behind_saved.synchronised and "behind the last time" in behind_saved.reason
    # A few minutes behind the saved time is the save interval, not a wrong clock.
    assert clock_state(NOW - dt.timedelta(minutes=1), build_date=BUILD, last_saved=NOW, timesyncd=None).synchronised
    waiting = clock_state(NOW, build_date=BUILD, last_saved=None, timesyncd=False)
    assert not waiting.synchronised and "timesyncd" in waiting.reason


def test_clock_watch_saves_only_forward_and_only_a_right_clock(tmp_path: Path) -> None:
    timesync = tmp_path / "timesync"
    watch = ClockWatch(tmp_path / "saved", timesync_dir=timesync, build_date=BUILD)
    assert watch.timesyncd() is None
    watch.save(NOW)
    assert watch.last_saved() == NOW
    watch.save(NOW - dt.timedelta(minutes=1))  # never backwards
    assert watch.last_saved() == NOW
    watch.save(dt.datetime(1970, 1, 2, tzinfo=dt.UTC))  # a wrong clock is not saved
    assert watch.last_saved() == NOW
    timesync.mkdir()
    assert watch.timesyncd() is False and not watch.state(NOW).synchronised
    (timesync / "synchronized").touch()
    assert watch.timesyncd() is True and watch.state(NOW).synchronised


def facts(lifetime_s: int = 3000, age_s: int = 0) -> CertFacts:
    start = NOW - dt.timedelta(seconds=age_s)
    return CertFacts("CN=dev", 1, start, start + dt.timedelta(seconds=lifetime_s))


def test_decide() -> None:
    assert decide(None, NOW, SYNCED, 2 / 3).action == "enroll"
    fresh = decide(facts(age_s=100), NOW, SYNCED, 2 / 3)
    assert fresh.action == "use" and fresh.next_check == facts(age_s=100).renew_time(2 / 3)
    assert decide(facts(age_s=2001), NOW, SYNCED, 2 / 3).action == "renew"
    assert decide(facts(age_s=1999), NOW, SYNCED, 2 / 3).action == "use"
    expired = decide(facts(age_s=3000), NOW, SYNCED, 2 / 3)
    assert expired.action == "reenroll" and "expired" in expired.why
    # A wrong clock: never expired, never renewed; kept.
    wrong = ClockState(False, "the clock is before this agent was built")
    for age in (0, 2500, 10**7):
        kept = decide(facts(age_s=age), NOW, wrong, 2 / 3)
        assert kept.action == "use" and "keeping the certificate" in kept.why


def test_issued_certificate_must_be_for_this_device_key_and_fleet() -> None:
    ca, other_ca = FleetCa.create(), FleetCa.create("another CA")
    key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_device("dev", key.public_key(), dt.timedelta(hours=1), NOW)
    assert issued_problem(cert, "dev", key.public_key(), [ca.cert]) is None
    assert issued_problem(cert, "dev", key.public_key(), [other_ca.cert, ca.cert]) is None  # a rotation bundle
    assert "not CN=other" in (issued_problem(cert, "other", key.public_key(), [ca.cert]) or "")
    assert "not for this device's key" in (issued_problem(cert, "dev", other_key.public_key(), [ca.cert]) or "")
    assert "not signed by a fleet CA" in (issued_problem(cert, "dev", key.public_key(), [other_ca.cert]) or "")
