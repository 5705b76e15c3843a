"""A signed document's expiry on a clock that may be wrong (edge_agent/desired/admission.py
ExpiryBasis, edge_agent/identity/clock.py expiry_reference): judged against now on a
synchronised clock; against the last time seen on a synchronised clock when it is not; not
judged when there is none. Pure decisions, then the owner with a real ClockWatch."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.desired.admission import Admitted, ExpiryBasis, History, Refused, admit, expiry_basis
from edge_agent.identity.clock import ClockState, ClockWatch, expiry_reference
from edge_agent.store import open_state_db
from edge_shared.document import Limits
from edge_shared.spec import validate_deployment
from edgectl.documents import sign_document
from tests.unit.desired.test_admission import ENFORCE, doc
from tests.unit.desired.test_admission import signed as signed_doc
from tests.unit.desired.test_manager import OLD, Rig
from tests.unit.desired.test_manager import config as config  # the fixture
from tests.unit.desired.test_manager import doc as manager_doc

REAL = dt.datetime.now(dt.UTC)
YEAR_AHEAD = REAL + dt.timedelta(days=365)
BUILD = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SYNCED = ClockState(True, "synchronised by systemd-timesyncd")
UNSYNCED = ClockState(False, "systemd-timesyncd has not synchronised the clock yet")


def judged(raw: bytes, basis: ExpiryBasis | None, now: dt.datetime) -> Admitted | Refused:
    decision = admit(raw, limits=Limits(), trust=ENFORCE, history=History(), now=now.timestamp(),
                     validate=validate_deployment, expiry=basis)
    assert isinstance(decision, Admitted | Refused)
    return decision


VALID = signed_doc(doc(7), expires_in=dt.timedelta(hours=1), now=REAL)  # signed now, valid an hour
EXPIRED_YESTERDAY = signed_doc(doc(8), expires_in=dt.timedelta(hours=1), now=REAL - dt.timedelta(days=1))


def test_expiry_reference_is_now_only_on_a_synchronised_clock() -> None:
    assert expiry_reference(SYNCED, YEAR_AHEAD, REAL) == YEAR_AHEAD
    assert expiry_reference(UNSYNCED, YEAR_AHEAD, REAL) == REAL
    assert expiry_reference(UNSYNCED, YEAR_AHEAD, None) is None


def test_expiry_basis_says_what_it_is_judged_against() -> None:
    assert expiry_basis(True, SYNCED.reason, REAL) == ExpiryBasis(REAL.timestamp())
    behind = expiry_basis(False, UNSYNCED.reason, REAL)
    assert behind.at == REAL.timestamp() and "last time seen on a synchronised clock" in behind.clock
    none = expiry_basis(False, UNSYNCED.reason, None)
    assert none.at is None and "expiry not judged" in none.clock


def test_a_synchronised_clock_refuses_an_expired_document() -> None:
    decision = judged(EXPIRED_YESTERDAY, expiry_basis(True, SYNCED.reason, REAL), REAL)
    assert isinstance(decision, Refused) and decision.code == "expired" and decision.version == 8
    assert "not synchronised" not in decision.description


def test_a_clock_a_year_ahead_not_synchronised_admits_a_valid_document() -> None:
    basis = expiry_basis(*_state(UNSYNCED), expiry_reference(UNSYNCED, YEAR_AHEAD, REAL - dt.timedelta(minutes=1)))
    decision = judged(VALID, basis, YEAR_AHEAD)
    assert isinstance(decision, Admitted) and decision.version == 7
    # The same clock, trusted as right, would have refused it: the control.
    ahead = judged(VALID, expiry_basis(True, SYNCED.reason, YEAR_AHEAD), YEAR_AHEAD)
    assert isinstance(ahead, Refused) and ahead.code == "expired"


def test_not_synchronised_still_refuses_what_expired_before_the_last_trusted_time() -> None:
    basis = expiry_basis(*_state(UNSYNCED), REAL)
    decision = judged(EXPIRED_YESTERDAY, basis, YEAR_AHEAD)
    assert isinstance(decision, Refused) and decision.code == "expired"
    assert "clock not synchronised" in decision.description and "last time seen" in decision.description


def test_not_synchronised_with_no_trusted_time_does_not_judge_expiry() -> None:
    decision = judged(EXPIRED_YESTERDAY, expiry_basis(*_state(UNSYNCED), None), dt.datetime(1970, 1, 2, tzinfo=dt.UTC))
    assert isinstance(decision, Admitted)  # the replay floor still refuses every older version


def _state(state: ClockState) -> tuple[bool, str]:
    return state.synchronised, state.reason


# --------------------------------------------------------------------------- the owner, with a real ClockWatch


async def test_the_owner_judges_expiry_by_the_clock_state(config: AgentConfig, tmp_path: Path) -> None:
    """The agent's clock a year ahead: while systemd-timesyncd has not synchronised, a valid
    document is admitted (judged against the last time saved on a synchronised clock); once it
    says the clock is synchronised, that clock is taken as right and the same kind is refused."""
    timesync = tmp_path / "timesync"
    timesync.mkdir()
    watch = ClockWatch(config.state.dir / "clock-last-seen", timesync_dir=timesync, build_date=BUILD)
    config.state.dir.mkdir(parents=True, exist_ok=True)
    (config.state.dir / "clock-last-seen").write_text((REAL - dt.timedelta(minutes=1)).isoformat())
    rig = Rig(config, open_state_db(config.state.dir))
    rig.manager.clock_watch = watch
    rig.manager.clock = YEAR_AHEAD.timestamp
    await rig.start()
    try:
        valid = signed_at(1, REAL)
        assert isinstance(rig.manager.submit(valid), Admitted)
        stale = rig.manager.submit(signed_at(2, REAL - dt.timedelta(hours=2)))
        assert isinstance(stale, Refused) and stale.code == "expired" and "not synchronised" in stale.description
        (timesync / "synchronized").touch()
        refused = rig.manager.submit(signed_at(3, REAL))
        assert isinstance(refused, Refused) and refused.code == "expired"
        assert "not synchronised" not in refused.description
    finally:
        await rig.stop()


def signed_at(version: int, at: dt.datetime) -> bytes:
    """Signed at `at`, valid for an hour."""
    return sign_document(manager_doc(version), OLD, expires_in=dt.timedelta(hours=1), now=at)
