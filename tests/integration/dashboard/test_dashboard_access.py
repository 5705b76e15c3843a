"""Who may reach the dashboard: it refuses to listen beyond loopback without TLS and a token; with
both, the browser gets in with the token (as the password it asks for), live updates included,
and nothing gets in without it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devinfra.mosquitto import Mosquitto
from devinfra.pki import Pki, unique
from tests.integration.dashboard.conftest import REPO, Publisher, hermetic


def dashboard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", "dashboard", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("extra", "env", "missing"), [
    ([], {}, "TLS (--https-cert and --https-key) and an access token"),
    ([], {"EDGECTL_DASHBOARD_TOKEN": "t" * 32}, "TLS (--https-cert and --https-key)"),
    (["--https-cert", "CERT", "--https-key", "KEY"], {}, "an access token"),
])
def test_refuses_to_listen_beyond_loopback_without_tls_and_a_token(
    tmp_path: Path, extra: list[str], env: dict[str, str], missing: str,
) -> None:
    pki = Pki(tmp_path / "pki")
    extra = [str(pki.server_cert) if a == "CERT" else str(pki.server_key) if a == "KEY" else a for a in extra]
    out = dashboard("--listen", "0.0.0.0:0", *extra, env={"EDGECTL_DASHBOARD_TOKEN": "", **env})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refusing to start" in out.stderr and f"it needs {missing}" in out.stderr, out.stderr
    assert out.stdout == ""  # it never listened


def test_short_token_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("short\n")
    out = dashboard("--token-file", str(token))
    assert out.returncode == 2 and "use at least 16" in out.stderr, out.stderr


def test_tls_and_token_let_the_browser_in_and_nobody_else(
    tmp_path: Path, mosquitto: Mosquitto, start_dashboard: Any, browser: Any,
) -> None:
    pki = Pki(tmp_path / "pki")  # its server certificate names 127.0.0.1
    token = "fleet-dashboard-" + unique()
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(token + "\n")
    prefix = unique("dash")
    Publisher(mosquitto.port).publish(f"{prefix}/car-1/presence", {"status": "online", "ts": time.time()},
                                      retain=True)
    board = start_dashboard(["--broker", "127.0.0.1", "--port", str(mosquitto.port), "--prefix", prefix,
                             *hermetic(tmp_path),
                             "--https-cert", str(pki.server_cert), "--https-key", str(pki.server_key),
                             "--token-file", str(token_file)])
    assert board.url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}):
        try:
            urllib.request.urlopen(urllib.request.Request(board.url, headers=headers), context=trusted, timeout=30)
            raise AssertionError(f"got in with {headers}")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401 and "Basic" in exc.headers["WWW-Authenticate"]
    for path in ("static/dashboard.js", "events?watch=fleet"):
        try:
            urllib.request.urlopen(board.url + path, context=trusted, timeout=30)
            raise AssertionError(f"{path} answered without the token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    ok = urllib.request.urlopen(urllib.request.Request(board.url, headers={"Authorization": f"Bearer {token}"}),
                                context=trusted, timeout=30)
    assert ok.status == 200 and "max-age" in ok.headers["Strict-Transport-Security"]

    context = browser.new_context(http_credentials={"username": "ops", "password": token},
                                  ignore_https_errors=True)  # (Chromium does not know the test CA)
    page = context.new_page()
    page.goto(board.url)
    page.wait_for_selector("tr[data-device='car-1']")
    page.wait_for_function("() => document.getElementById('live-status').textContent === 'live'", timeout=30_000)
    context.close()
    wrong = browser.new_context(http_credentials={"username": "ops", "password": token + "x"},
                                ignore_https_errors=True)
    answer = wrong.new_page().goto(board.url)
    assert answer is not None and answer.status == 401
    wrong.close()
    stranger = browser.new_context(ignore_https_errors=True)
    assert stranger.request.get(board.url).status == 401
    stranger.close()
