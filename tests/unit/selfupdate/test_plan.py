"""decide(): what the agent does about the agent release a deployment names, every case."""

from __future__ import annotations

import pytest

from edge_agent.selfupdate.files import Trial
from edge_agent.selfupdate.plan import Confirm, Idle, Install, Refuse, Restart, decide

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
