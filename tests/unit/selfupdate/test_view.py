"""How the agentUpdate section reads in `edge-agent status`, `edgectl show` and `edgectl devices`."""

from __future__ import annotations

from edge_shared.status_view import agent_update_line, render_status
from edgectl.client import DeviceView
from edgectl.show import device_rows, render_devices


def test_nothing_to_say() -> None:
    assert agent_update_line(None) is None
    assert agent_update_line({"running": "1.0", "wanted": None, "state": "idle", "detail": "no agent version"}) is None
    assert agent_update_line({"running": "1.0", "wanted": "1.0", "state": "idle", "detail": "as wanted"}) is None


def test_wanted_and_under_way() -> None:
    line = agent_update_line({"running": "1.0", "wanted": "1.1", "state": "installing", "detail": "agent 1.1 from x"})
    assert line == "agent 1.1 wanted: installing (agent 1.1 from x)"


def test_trial_and_last_outcome() -> None:
    line = agent_update_line({
        "running": "1.1", "wanted": "1.1", "state": "trial", "detail": "proving itself",
        "trial": {"version": "1.1", "starts": 2},
        "last": {"result": "rolled_back", "version": "1.2", "previous": "1.1", "reason": "crash loop"},
    })
    assert line == ("trial (proving itself); on trial: 1.1 (start 2); "
                    "last update: rolled_back 1.1 -> 1.2 (crash loop)")


def test_status_shows_the_update_line_not_raw_json() -> None:
    text = render_status({"reported": {"agentUpdate": {"running": "1.0", "wanted": "1.1", "state": "refused",
                                                        "detail": "agent 1.1: rolled back before: crash loop"}}})
    assert "update      agent 1.1 wanted: refused (agent 1.1: rolled back before: crash loop)" in text
    assert "agentUpdate:" not in text


def test_devices_column_shows_a_wanted_version() -> None:
    views = [
        DeviceView("a", reported={"agent": {"version": "1.0"},
                                  "agentUpdate": {"running": "1.0", "wanted": "1.1", "state": "installing"}},
                   presence="online"),
        DeviceView("b", reported={"agent": {"version": "1.1"}, "agentUpdate": {"running": "1.1", "wanted": "1.1"}},
                   presence="online"),
    ]
    rows = device_rows(views, 0.0)
    assert [(r["agentVersion"], r["agentWanted"], r["agentUpdateState"]) for r in rows] == [
        ("1.0", "1.1", "installing"), ("1.1", "1.1", None)]
    text = render_devices(views, 0.0)
    assert "1.0>1.1 (installing)" in text
