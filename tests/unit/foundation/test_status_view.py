"""`edge-agent status` text in every state: no `None`, no `?` where a state is known."""

from __future__ import annotations

import copy
from typing import Any

from edge_shared.status_view import render_status

FIRST_BOOT: dict[str, Any] = {
    "device": "rover-01", "version": "0.1.0", "pid": 42, "uptime_s": 4.0, "config": "/etc/edge-agent/config.toml",
    "state_dir": "/var/lib/edge-agent",
    "components": {name: {"stalled": None, "last_error": None} for name in ("trust", "deployment", "twin")},
    "reported": {
        "deployment": {"current": None, "lastKnownGood": None, "highestVersion": None, "versions": {},
                       "lastRefused": None, "maxDocumentBytes": 1048576, "documentMode": "enforce"},
        "telemetry": {"depth": 0, "bytes": 0, "capBytes": 67108864, "oldestAgeS": None, "drops": {}, "refused": {},
                      "diskFull": False, "streams": {}, "uploadRate": 0.0, "sentRecords": 0, "connected": False,
                      "lastError": None, "refusedBatches": 0, "sockets": []},
        "attestation": {"available": False, "reason": "attestation is disabled in the config"},
        "agent": {"version": "0.1.0", "os": "linux", "arch": "aarch64", "python": "3.11.2",
                  "disk": {"path": "/var/lib/edge-agent", "totalBytes": 32 << 30, "freeBytes": 20 << 30},
                  "memory": {"agentRssBytes": 50 << 20}},
    },
}


def test_first_boot_reads_as_sentences() -> None:
    text = render_status(FIRST_BOOT)
    assert "None" not in text and "(?)" not in text, text
    assert "deployment  none yet: no deployment has been received and accepted on this device" in text
    assert "components  trust ok, deployment ok, twin ok" in text
    assert "0 sent since the agent started" in text and "not connected" in text
    assert "20.0 GiB free of 32.0 GiB" in text


def test_running_deployment_with_modules_drops_and_a_refused_reload() -> None:
    status = copy.deepcopy(FIRST_BOOT)
    r = status["reported"]
    r["deployment"].update(
        current=7, lastKnownGood=6, highestVersion=8,
        versions={"8": {"state": "rejected", "code": "unsigned", "module": "pilot", "description": "image reg/p:2"},
                  "7": {"state": "probation", "description": "good at 10:00 if it stays so"},
                  "6": {"state": "good"}},
        lastRefused={"code": "replayed", "description": "version 5 is not newer", "version": 5},
    )
    r["modules"] = {"pilot": {"runtimeStatus": "running", "restartCount": 1, "exitCode": None, "health": "healthy",
                              "startTime": "2026-11-28T10:00:00Z", "image": "reg/pilot:1",
                              "statusDescription": "running"}}
    r["telemetry"].update(depth=12, bytes=4096, oldestAgeS=300, connected=True, sentRecords=900,
                          drops={"pilot.frames": {"evicted": 3}}, refused={"pilot.alerts": {"queue_full": 1}})
    r["config"] = {"status": "rejected", "description": "c.toml:3: mqtt.port: got 0",
                   "problems": ["c.toml:3: mqtt.port: got 0", "c.toml:9: device.idd: unknown key"]}
    status["components"]["twin"]["last_error"] = "ValueError: embedded null byte"
    text = render_status(status)
    assert "None" not in text, text
    assert "deployment  version 7 probation: good at 10:00 if it stays so; last known good 6" in text
    assert "newest: version 8 rejected (unsigned, module pilot): image reg/p:2" in text
    assert "last refused document (version 5): replayed: version 5 is not newer" in text
    assert "pilot   running" in text and "reg/pilot:1" in text
    assert "12 records queued (4.0 KiB of 64.0 MiB), oldest 5 min; connected" in text
    assert "pilot.frames: dropped 3 evicted" in text and "pilot.alerts: refused 1 queue_full" in text
    assert "reload      REFUSED, running with the previous config:" in text
    assert "            c.toml:9: device.idd: unknown key" in text
    assert "twin ok (restarted)" in text and "twin: last error: ValueError: embedded null byte" in text


def test_telemetry_unavailable_and_empty_reported_state() -> None:
    status = copy.deepcopy(FIRST_BOOT)
    status["reported"] = {"telemetry": {"status": "unavailable", "error": "disk I/O error"}}
    text = render_status(status)
    assert "telemetry   UNAVAILABLE: disk I/O error" in text
    assert "deployment  none yet" in text
    bare = render_status({})
    assert bare.startswith("device (unknown)") and "None" not in bare
