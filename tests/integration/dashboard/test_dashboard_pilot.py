"""The device page's pilot charts and the A/B compare page, from pilot telemetry on a real broker.

Four cars in two label groups send `pilot.stats` records in the pilot's format (docs/pilot.md),
each on its own telemetry topic as the agent's uplink sends them; the values are chosen so the
compare table can be checked by hand: group A (deployment 7) drives at 30 fps, 10 ms frames and
|cross-track error| 0.1 m; group B (deployment 6) at 20 fps, 40 ms and 0.3 m.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from devinfra.mosquitto import Mosquitto
from devinfra.pki import unique
from edge_shared.batch import SCHEMA
from tests.integration.dashboard.conftest import Publisher, Screenshots, hermetic

RECORDS = 60
GROUPS = {"A": ("canary", 7, 30.0, 10.0, 0.1), "B": ("stable", 6, 20.0, 40.0, 0.3)}


def report(device: str, ring: str, version: int) -> dict[str, Any]:
    return {
        "schema": 1, "deviceId": device, "sequence": 1, "ts": time.time(),
        "agent": {"version": "0.1.0", "os": "linux", "arch": "aarch64"},
        "device": {"labels": {"ring": ring, "site": "turin"}},
        "deployment": {"current": version, "lastKnownGood": version, "highestVersion": version,
                       "versions": {str(version): {"state": "good", "digest": "ab",
                                                   "description": "every module ran for 30 s"}}},
        "modules": {"pilot": {"image": f"registry.local/pilot:{version}", "runtimeStatus": "running",
                              "restartCount": 0}},
        "telemetry": {"depth": 0, "connected": True},
    }


def batch(device: str, version: int, fps: float, frame_ms: float, cte: float, start: int, count: int,
          now: float) -> dict[str, Any]:
    records = []
    for i in range(start, start + count):
        angle = 2 * math.pi * i / RECORDS
        records.append({
            "id": f"{device}-{i}", "seq": i, "ts": now - (RECORDS - i), "received": now, "priority": 5,
            "module": "pilot", "deployment": version,
            "payload": {
                "fps": fps, "frames": int(fps), "late": 0, "errors": 0, "stopped": None, "model": "3f2a9c",
                "total_ms": [frame_ms] * 5,
                "latency_ms": {"capture_to_actuate": {"p50": frame_ms + 20 + (i % 7), "p99": frame_ms + 45 + (i % 5)}},
                "sim": {"cte_m": cte if (i // 10) % 2 else -cte,
                        "path": [[3 * math.cos(angle + k * 0.01), 2 * math.sin(angle + k * 0.01)] for k in range(10)]},
            },
        })
    return {"schema": SCHEMA, "device": device, "stream": "pilot.stats", "records": records}


def test_pilot_charts_and_ab_compare_from_telemetry(
    mosquitto: Mosquitto, start_dashboard: Any, browser: Any, screenshots: Screenshots, tmp_path: Path,
) -> None:
    prefix = unique("dash")
    pub = Publisher(mosquitto.port)
    cars = {"car-a1": "A", "car-a2": "A", "car-b1": "B", "car-b2": "B"}
    for car, group in [*cars.items(), ("probe-00", "")]:
        ring, version, *_ = GROUPS.get(group, ("none", 1, 0, 0, 0))
        pub.publish(f"{prefix}/{car}/presence", {"status": "online", "ts": time.time()}, retain=True)
        pub.publish(f"{prefix}/{car}/reported", report(car, ring, version), retain=True)
    board = start_dashboard(["--broker", "127.0.0.1", "--port", str(mosquitto.port), "--prefix", prefix,
                             *hermetic(tmp_path),
                             "--group", "A=ring=canary", "--group", "B=ring=stable"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # Telemetry is not retained: wait until the dashboard receives it (a probe car outside both
    # groups), then send the cars' records.
    page.goto(f"{board.url}device/probe-00")
    page.wait_for_selector("#modules")
    deadline = time.monotonic() + 60
    while page.query_selector("#pilot-now") is None:
        assert time.monotonic() < deadline, "the dashboard received no telemetry"
        pub.publish(f"{prefix}/probe-00/telemetry/pilot.stats", batch("probe-00", 1, 1, 1, 0, 0, 1, time.time()))
        page.wait_for_timeout(300)

    now = time.time()
    for car, group in cars.items():
        _, version, fps, frame_ms, cte = GROUPS[group]
        for start in range(0, RECORDS, 20):
            records = batch(car, version, fps, frame_ms, cte, start, 20, now)
            pub.publish(f"{prefix}/{car}/telemetry/pilot.stats", records)
    # a duplicate delivery (the uplink is at-least-once) must not count twice
    pub.publish(f"{prefix}/car-a1/telemetry/pilot.stats", batch("car-a1", 7, 30.0, 10.0, 0.1, 0, 20, now))

    page.goto(f"{board.url}device/car-a1")
    page.wait_for_function("() => (document.getElementById('pilot-now') || {}).textContent", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#pilot-charts svg polyline').length >= 5 && "
                           "document.getElementById('live').innerText.includes('deployment 7')", timeout=30_000)
    charts = page.locator("#pilot-charts svg")
    assert charts.count() == 4  # fps, capture-to-actuate latency, cross-track error, driven path
    chart_text = page.inner_text("#pilot-charts")
    for label in ("Frames per second", "fps", "Capture-to-actuate latency", "latency (ms)", "p50", "p99",
                  "Cross-track error", "cross-track error (m)", "time (s, 0 = now)", "Driven path", "x (m)", "y (m)"):
        assert label in chart_text, label
    assert "30.0 fps" in page.inner_text("#pilot-now")
    screenshots.take(page, "device-pilot")

    # the fleet page filters as one types, and by "needs attention", without reloading
    page.goto(board.url)
    page.wait_for_selector("#fleet-table")
    page.evaluate("window.__sameDocument = true")
    page.fill("#search", "car-b")
    page.wait_for_function("() => Array.from(document.querySelectorAll('#fleet-table tr[data-device]'))"
                           ".map(r => r.dataset.device).join() === 'car-b1,car-b2'", timeout=30_000)
    assert "q=car-b" in page.url
    page.check("#attention")  # every car here is good: none needs attention
    page.wait_for_function("() => document.querySelector('#fleet-table td.empty') !== null", timeout=30_000)
    assert "no device that matches needs attention" in page.inner_text("#fleet-table")
    assert page.evaluate("window.__sameDocument") is True

    page.goto(f"{board.url}compare")
    page.wait_for_selector("#compare-table")
    table = {
        row[0]: row[1:] for row in page.eval_on_selector_all(
            "#compare-table tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))")
    }
    assert table[""] == ["A v7", "B v6"]
    assert table["devices"] == ["2", "2"] and table["records"] == [str(2 * RECORDS)] * 2
    assert table["fps mean"] == ["30", "20"]
    assert table["latency p50 ms"] == ["10", "40"]
    assert table["cte mean m"] == ["0.100", "0.300"]
    assert page.locator("#compare-charts svg").count() == len(table) - 4  # one chart per metric row
    assert "A v7 (2 devices, 120 records)" in page.inner_text("#compare-charts")
    screenshots.take(page, "compare")
    page.close()
