"""decide(): what the agent does about the agent release a deployment names, every case."""

from __future__ import annotations

import pytest

from edge_agent.selfupdate.files import Trial
from edge_agent.selfupdate.plan import SWITCH_RETRY_S, Confirm, Idle, Install, Refuse, Restart, Wait, decide

IMG = "reg.local/edge-agent-release@sha256:" + "a" * 64


def trial(version: str) -> Trial:
    return Trial(version, "/opt/edge-agent", 1, 0.0)


@pytest.mark.parametrize(
    ("wanted", "running", "the_trial", "bad", "installed", "requested", "expected"),
    [
        (None, "1.0", None, {}, False, None, Idle),
        ("1.0", "1.0", None, {}, False, None, Idle),
        ("1.1", "1.0", None, {}, False, None, Install),
        ("1.1", "1.0", None, {}, True, None, Install),  # installed but never requested: request again
        ("1.1", "1.0", None, {}, True, "1.1", Restart),  # requested, restart did not happen yet
        ("1.1", "1.0", None, {"1.1": "crash loop"}, True, None, Refuse),
        ("1.1", "1.1", trial("1.1"), {}, True, None, Confirm),  # the trial comes first
        (None, "1.1", trial("1.1"), {}, True, None, Confirm),  # even if the document changed meanwhile
        ("1.2", "1.1", trial("1.1"), {}, False, None, Confirm),
        ("1.0", "1.1", None, {}, False, None, Install),  # going back is an update like any other
        ("1.1", "1.0", trial("1.1"), {}, True, None, Install),  # a trial of another version: not ours
    ],
)
def test_decide(wanted, running, the_trial, bad, installed, requested, expected) -> None:  # type: ignore[no-untyped-def]
    action = decide(wanted, IMG if wanted else None, running, the_trial, bad, installed, requested)
    assert isinstance(action, expected), action
    if isinstance(action, Refuse):
        assert "crash loop" in action.reason and action.version == "1.1"
    if isinstance(action, Install):
        assert (action.version, action.image) == (wanted, IMG)


def test_no_image_is_idle() -> None:
    assert isinstance(decide("1.1", None, "1.0", None, {}, False, None), Idle)


def test_an_installed_release_waits_for_the_broker_before_the_switch() -> None:
    """A trial confirms only connected: a switch made offline would roll back a release that may be healthy."""
    offline = decide("1.1", IMG, "1.0", None, {}, True, "1.1", connected=False)
    assert isinstance(offline, Wait) and offline.version == "1.1" and "connected" in offline.why
    assert isinstance(decide("1.1", IMG, "1.0", None, {}, True, None, connected=False), Wait)
    # Installing goes on offline (nothing to confirm yet); a trial and a refusal come first.
    assert isinstance(decide("1.1", IMG, "1.0", None, {}, False, None, connected=False), Install)
    assert isinstance(decide("1.1", IMG, "1.1", trial("1.1"), {}, True, None, connected=False), Confirm)
    assert isinstance(decide("1.1", IMG, "1.0", None, {"1.1": "x"}, True, None, connected=False), Refuse)
    assert isinstance(decide("1.1", IMG, "1.0", None, {}, True, "1.1", connected=True), Restart)


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        ({"result": "failed", "version": "1.1", "reason": "disk full", "at": 1000}, 1000 + SWITCH_RETRY_S - 1, Wait),
        ({"result": "failed", "version": "1.1", "reason": "disk full", "at": 1000}, 1000 + SWITCH_RETRY_S, Install),
        ({"result": "failed", "version": "1.2", "reason": "disk full", "at": 1000}, 1001, Install),  # another one
        ({"result": "rolled_back", "version": "1.1", "reason": "x", "at": 1000}, 1001, Install),  # bad/ decides
        ({"result": "failed", "version": "1.1", "reason": "x", "at": "junk"}, 1001, Install),  # unreadable time
        (None, 1001, Install),
    ],
)
def test_after_the_guard_failed_to_start_a_trial_the_switch_waits(last, now, expected) -> None:  # type: ignore[no-untyped-def]
    """Each switch restarts the agent: a lasting cause (disk full) must not restart it every few seconds."""
    action = decide("1.1", IMG, "1.0", None, {}, True, None, last=last, now=now)
    assert isinstance(action, expected), action
    if isinstance(action, Wait):
        assert "disk full" in action.why and "next try in 1 s" in action.why
