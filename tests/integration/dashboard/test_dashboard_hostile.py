"""A compromised device reports hostile strings: the dashboard shows them as text and no script
runs, on the first render and after a live update (the fragment the page swaps in).

The device's retained report is published on a real mosquitto as a compromised device would
publish it (it owns its reported topic); Chromium renders the real `edgectl dashboard`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devinfra.mosquitto import Mosquitto
from devinfra.pki import unique
from tests.integration.dashboard.conftest import Publisher, Screenshots, hermetic

SCRIPT = "<script>window.__pwned = 'script'</script>"
IMG = "<img src=x onerror=\"window.__pwned = 'img'\">"
SVG = "<svg onload=\"window.__pwned = 'svg'\">"
QUOTE = "\" onmouseover=\"window.__pwned='attr'"


def hostile_report(device: str, sequence: int, extra: str) -> dict[str, Any]:
    return {
        "schema": 1, "deviceId": device, "sequence": sequence, "ts": time.time(),
        "agent": {"version": f"0.1.0{IMG}", "os": SVG, "arch": "x86_64"},
        "device": {"labels": {"site": "turin"}},
        "agentUpdate": {"running": "0.1.0", "wanted": "0.1.1", "state": "refused", "detail": SCRIPT},
        "deployment": {
            "current": 1, "lastKnownGood": 1, "highestVersion": 2,
            "versions": {
                "2": {"state": "rejected", "code": f"bad{SCRIPT}", "module": SCRIPT, "digest": "00",
                      "description": f"refused because {IMG}{extra}"},
                "1": {"state": "good", "digest": "11", "description": QUOTE},
            },
            "lastRefused": {"code": "untrusted_key", "digest": "22", "at": "now", "description": IMG},
            "error": SVG,
        },
        "modules": {
            SCRIPT: {"image": IMG, "digest": "sha256:" + "0" * 64, "runtimeStatus": "failed",
                     "statusDescription": SVG, "restartCount": 3,
                     "artifacts": {"/models/<b>m</b>": {"ref": SCRIPT, "digest": "sha256:1", "placed": "sha256:1",
                                                          "module": "refused", "refusedReason": IMG}},
                     "moduleReport": {"using": [SCRIPT], "refused": []}},
        },
        "attestation": {"available": False, "reason": SCRIPT},
        "telemetry": {"depth": 5, "lastError": IMG, "connected": True},
    }


def test_hostile_strings_are_shown_as_text_and_run_no_script(
    mosquitto: Mosquitto, start_dashboard: Any, browser: Any, screenshots: Screenshots, tmp_path: Path,
) -> None:
    prefix = unique("dash")
    device = "compromised-01"
    device_pub = Publisher(mosquitto.port)
    device_pub.publish(f"{prefix}/{device}/presence", {"status": "online", "ts": time.time()}, retain=True)
    device_pub.publish(f"{prefix}/{device}/reported", hostile_report(device, 1, ""), retain=True)
    board = start_dashboard(["--broker", "127.0.0.1", "--port", str(mosquitto.port), "--prefix", prefix,
                             *hermetic(tmp_path)])

    # Every answer carries the strict policy: scripts from the dashboard's own files only.
    with urllib.request.urlopen(board.url, timeout=30) as answer:
        csp = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    request = urllib.request.Request(board.url, method="POST", data=b"x")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("a POST was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405  # read-only

    page = browser.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(board.url)
    page.wait_for_selector(f"tr[data-device='{device}']")
    assert page.evaluate("window.__pwned") is None
    row = page.inner_text(f"tr[data-device='{device}']")
    assert f"0.1.0{IMG}" in row  # the agent version, as the literal text it is

    page.goto(f"{board.url}device/{device}")
    page.wait_for_selector("#modules")
    page.wait_for_function("() => document.getElementById('live-status').textContent === 'live'", timeout=30_000)
    text = page.inner_text("body")
    for literal in (SCRIPT, IMG, SVG, QUOTE):
        assert literal in text, literal
    assert page.inner_text(".module-name") == SCRIPT
    # no element came out of a device's string
    assert page.evaluate("document.querySelectorAll('main script, main img, main [onerror], main [onload], "
                         "main [onmouseover], main b').length") == 0
    assert page.evaluate("window.__pwned") is None
    screenshots.take(page, "hostile-device")

    # A live update (the page swaps in the server's fragment without reloading) is escaped too.
    page.evaluate("window.__sameDocument = true")
    marker = f"second report {unique()}"
    device_pub.publish(f"{prefix}/{device}/reported", hostile_report(device, 2, f" {marker}"), retain=True)
    page.wait_for_function(f"() => document.body.innerText.includes({json.dumps(marker)})", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    assert f"refused because {IMG} {marker}" in page.inner_text("#versions")
    assert page.evaluate("document.querySelectorAll('main script, main img, main [onerror]').length") == 0
    page.mouse.move(200, 300)
    page.hover(".module-name")
    assert page.evaluate("window.__pwned") is None
    assert violations == [], violations  # nothing even tried to run inline
    page.close()
