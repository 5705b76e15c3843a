"""The dashboard's pure parts: what the fleet table shows and how it filters and sorts, the SVG
charts (axes that hold every value, escaped text), the telemetry buffer, and the safety rules
(bind, token, headers, Host check, read-only)."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from edge_shared.labels import parse_selector
from edgectl.client import DeviceView
from edgectl.compare import Column, Comparison, Row
from edgectl.dashboard import charts, views
from edgectl.dashboard.security import CSP, Guard, allowed_hosts, bind_problem, token_matches
from edgectl.dashboard.telemetry_buffer import TelemetryBuffer

NOW = 1_800_000_000.0


def view(device: str, *, presence: str = "online", labels: dict[str, str] | None = None, current: int | None = 3,
         state: str = "good", newest: tuple[int, str] | None = None, queue: int | None = None,
         identity: dict[str, Any] | None = None, modules: dict[str, Any] | None = None) -> DeviceView:
    versions = {} if current is None else {str(current): {"state": state}}
    if newest:
        versions[str(newest[0])] = {"state": newest[1], "code": "module_failed", "description": "exit 3"}
    reported: dict[str, Any] = {
        "ts": NOW - 5, "agent": {"version": "0.1.0"}, "device": {"labels": labels or {}},
        "deployment": {"current": current, "highestVersion": newest[0] if newest else current, "versions": versions},
        "modules": modules or {},
    }
    if queue is not None:
        reported["telemetry"] = {"depth": queue}
    if identity is not None:
        reported["identity"] = identity
    return DeviceView(device, reported=reported, presence=presence)


def test_fleet_rows_health_filter_search_and_sort() -> None:
    fleet = [
        view("car-1", labels={"site": "turin"}, queue=4),
        view("car-2", labels={"site": "milan"}, newest=(4, "rolled_back")),
        view("car-3", labels={"site": "turin"}, presence="offline", current=None),
        view("car-4", labels={"site": "turin", "hw": "rev-b"}, state="probation",
             modules={"app": {"runtimeStatus": "restarting"}}),
    ]
    page = views.fleet_page(fleet, NOW)
    health = {r.device: r.health for r in page.rows}
    assert health == {"car-1": "ok", "car-2": "bad", "car-3": "unknown", "car-4": "bad"}
    car2 = next(r for r in page.rows if r.device == "car-2")
    assert car2.state == "good; 4 rolled_back" and "version 4 rolled_back" in car2.problems[0]
    assert next(r for r in page.rows if r.device == "car-3").state == "none"
    assert page.total == 4 and page.online == 3 and page.counts == {"ok": 1, "bad": 2, "unknown": 1}
    assert page.versions == [("none", 1), ("3", 3)]
    turin = views.fleet_page(fleet, NOW, selector=parse_selector("site=turin,hw!=rev-b"))
    assert [r.device for r in turin.rows] == ["car-1", "car-3"]
    assert [r.device for r in views.fleet_page(fleet, NOW, search="ROLLED").rows] == ["car-2"]
    assert [r.device for r in views.fleet_page(fleet, NOW, search="hw=rev").rows] == ["car-4"]
    assert [r.device for r in views.fleet_page(fleet, NOW, attention=True).rows] == ["car-2", "car-3", "car-4"]
    by_queue = views.fleet_page(fleet, NOW, sort="queue", descending=True)
    assert by_queue.rows[0].device == "car-1" and by_queue.rows[0].queue == 4
    by_state = views.fleet_page(fleet, NOW, sort="state")
    assert [r.health for r in by_state.rows] == ["bad", "bad", "unknown", "ok"]
    assert views.fleet_page(fleet, NOW, sort="nonsense").sort == "device"


def test_certificate_expiry_once_reported() -> None:
    assert views.fleet_row(view("a"), NOW).cert_text == "not reported"
    soon = views.fleet_row(view("b", identity={"notAfter": NOW + 10 * 86400}), NOW)
    assert soon.cert_text.endswith("(10 d left)") and soon.cert_expiry == NOW + 10 * 86400
    assert "certificate expires in 10 d" in soon.problems and soon.health == "warn"
    gone = views.fleet_row(view("c", identity={"notAfter": "2020-01-01T00:00:00Z"}), NOW)
    assert gone.cert_text == "EXPIRED 2020-01-01" and gone.health == "bad"


def test_device_page_hides_desired_secrets() -> None:
    v = view("car-1")
    v.desired = {"version": 3, "deployment": {"modules": {"app": {"image": "r/app:1", "env": {"TOKEN": "s3cret"}}}},
                 "properties": {"app": {"password": "hunter2"}}, "meta": {"by": "ops", "rollout": "r1", "x": "y"}}
    page = views.device_page(v, NOW)
    assert page.desired_meta == {"by": "ops", "rollout": "r1"}
    assert "s3cret" not in repr(page) and "hunter2" not in repr(page)
    assert page.modules[0].desired_image == "r/app:1"


@given(st.floats(-1e6, 1e6), st.floats(0, 1e6), st.integers(2, 8))
def test_ticks_enclose_the_values(lo: float, width: float, count: int) -> None:
    ticks = charts.nice_ticks(lo, lo + width, count)
    assert ticks == sorted(ticks) and len(ticks) >= 2
    slack = 1e-6 * (ticks[1] - ticks[0])  # far below a pixel of any chart
    assert ticks[0] <= lo + slack and ticks[-1] >= lo + width - slack


def test_charts_escape_text_and_label_axes() -> None:
    hostile = "<script>alert(1)</script>"
    svg = str(charts.line_chart("t", [charts.Series(hostile, [(-2.0, 1.0), (0.0, 3.0)])], x_label="time (s)",
                                y_label="fps"))
    assert hostile not in svg and "&lt;script&gt;" in svg
    assert ">time (s)</text>" in svg and ">fps</text>" in svg and "<polyline" in svg
    empty = str(charts.line_chart("t", [charts.Series("fps", [])], x_label="x", y_label="y"))
    assert "no data yet" in empty
    comparison = Comparison((Column(hostile, 1, ("d",), 3), Column("B", None, (), 0)),
                            (Row("fps", "fps mean", (30.0, None)),))
    (bars,) = charts.compare_bars(comparison)
    assert hostile not in str(bars) and ">30</text>" in str(bars) and "no data" in str(bars)


def test_telemetry_buffer_dedups_and_reduces() -> None:
    buffer = TelemetryBuffer(per_device=3)
    record = {"device": "car-1", "id": "r1", "seq": 1, "ts": NOW, "deployment": 7,
              "payload": {"fps": 30, "total_ms": [10, 11], "latency_ms": {"capture_to_actuate": {"p50": 33.0}},
                          "sim": {"cte_m": -0.2, "path": [[0, 1], [1, "x"], [2, 3]]}}}
    assert buffer.add(record) and not buffer.add(record)
    (sample,) = buffer.samples("car-1")
    assert (sample.fps, sample.c2a_p50, sample.cte, sample.version) == (30.0, 33.0, -0.2, 7)
    assert buffer.path("car-1") == [(0.0, 1.0), (2.0, 3.0)]
    assert buffer.records()[0]["payload"] == {"fps": 30, "total_ms": [10, 11], "sim": {"cte_m": -0.2}}
    for i in range(5):
        buffer.add({**record, "id": f"n{i}", "ts": NOW + i})
    assert len(buffer.samples("car-1")) == 3 and len(buffer.records(since=NOW + 3)) == 2
    assert not buffer.add({"device": "car-1", "id": "bad", "payload": "x"})


@pytest.mark.parametrize(("host", "tls", "token", "refused"), [
    ("127.0.0.1", False, None, False),
    ("::1", False, None, False),
    ("localhost", False, None, False),
    ("0.0.0.0", False, None, True),
    ("0.0.0.0", True, None, True),
    ("0.0.0.0", False, "t" * 32, True),
    ("192.0.2.7", True, "t" * 32, False),
    ("127.0.0.1", False, "short", True),
])
def test_bind_rules(host: str, tls: bool, token: str | None, refused: bool) -> None:
    assert (bind_problem(host, tls=tls, token=token) is not None) == refused


def test_token_forms() -> None:
    token = "x" * 24
    assert token_matches(f"Bearer {token}", token)
    assert token_matches("Basic " + base64.b64encode(f"ops:{token}".encode()).decode(), token)
    assert not token_matches(f"Bearer {token}y", token)
    assert not token_matches("Basic !!!", token) and not token_matches(None, token)


def test_guard_headers_host_token_and_read_only() -> None:
    inner = Starlette(routes=[Route("/", lambda request: PlainTextResponse("fleet"), methods=["GET", "POST"])])
    token = "k" * 20
    client = TestClient(Guard(inner, token=token, hosts=allowed_hosts("127.0.0.1", ()), tls=False),
                        base_url="http://127.0.0.1:8088")
    refused = client.get("/")
    assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
    assert refused.headers["content-security-policy"] == CSP
    ok = client.get("/", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.text == "fleet" and ok.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in ok.headers["content-security-policy"]
    assert client.post("/", headers={"Authorization": f"Bearer {token}"}).status_code == 405
    rebinding = client.get("/", headers={"Authorization": f"Bearer {token}", "Host": "evil.example:8088"})
    assert rebinding.status_code == 421


def test_ago_and_durations() -> None:
    now = time.time()
    assert views.ago(None, now) == "never" and views.ago(now - 5, now) == "5 s ago"
    assert views.duration(3 * 86400) == "3 d"


def test_rollout_page_marks_interrupted_halted_and_reverted() -> None:
    from types import SimpleNamespace

    from edgectl import rollout_policy as rp

    rollout = rp.new_rollout("r1", [["a"], ["b", "c"]], rp.Policy())
    meta = SimpleNamespace(owner="host:1", heartbeat=NOW - 1, selector="s", batches_spec="1,100%", manifest_path="m",
                           created=NOW - 60, updated=NOW - 1)
    assert not views.rollout_page(rollout, meta, [], NOW, owner_alive=True).interrupted
    assert views.rollout_page(rollout, meta, [], NOW, owner_alive=False).interrupted  # SIGKILLed edgectl
    assert views.rollout_page(rollout, SimpleNamespace(**{**vars(meta), "heartbeat": NOW - 60}), [], NOW).interrupted
    b, c = (rp.DeviceRecord(d, 1, rp.Phase.REVERTED, reason="returned", failed_reason="rolled_back") for d in "bc")
    halted = rp.Rollout("r1", rp.Status.HALTED, 1, 2, rp.Policy(),
                        (rp.DeviceRecord("a", 0, rp.Phase.REACHED), b, c), "batch 2 of 2 failed its gate")
    page = views.rollout_page(halted, meta, [(NOW, "x")], NOW, owner_alive=False)
    assert page.halted and page.reverted and not page.interrupted
    assert [(r.number, r.failed, r.settled, r.reached) for r in page.rows] == [(1, False, 1, 1), (2, True, 2, 0)]
    assert [d.failed_reason for d in page.rows[1].devices] == ["rolled_back", "rolled_back"]


def test_rollout_list_shows_a_rollout_no_edgectl_runs_as_interrupted() -> None:
    import socket

    from edgectl.dashboard.views import rollout_list

    now = 1_000_000.0
    dead = f"{socket.gethostname()}:999999999"  # no such pid on this host
    rows = [
        ("r1", "running", 0, 2, now - 10, now - 1, "a.json", 3, dead, now - 1),
        ("r2", "running", 0, 2, now - 10, now - 1, "b.json", 3, None, None),
        ("r3", "completed", 1, 2, now - 10, now - 1, "c.json", 3, dead, now - 1),
        ("r4", "running", 0, 2, now - 10, now - 1, "d.json", 3, f"{socket.gethostname()}:{os.getpid()}", now - 1),
    ]
    shown = {r.id: r.status for r in rollout_list(rows, at=now)}
    assert shown == {"r1": "interrupted", "r2": "interrupted", "r3": "completed", "r4": "running"}
