"""`edgectl dashboard` with a fleet of N lightweight devices (bench/fleet_bench.py's: the agent's
real twin and desired-state code, no podman) on one mosquitto on this machine, seen in Debian's
Chromium (headless, through Playwright):

- first render: the fleet page opened in the browser until its table holds all N rows; also the
  server's answer alone (HTTP GET of the whole page, to its last byte), and the dashboard's
  start (process launched -> its page lists all N devices: includes its own read of the broker);
- a state change: a device goes offline (its presence message, as its last will would be
  published) and comes back; time from the broker's acknowledgement of that message until the
  open fleet page shows it, without a reload; and a deployment: `edgectl deploy`-style publish to
  one device until the page shows the version the device then reports.

Floors measured in the same run: a raw MQTT client reading the same retained reports
(subscribe to <prefix>/+/reported and /presence until it has all N of each: what any page of the
fleet must at least wait for), edgectl's own read (FleetClient.devices, as `edgectl devices`),
and a raw subscriber's receipt of the same state-change messages.

    python bench/dashboard_bench.py [--devices 1000] [--hosts 4] [--changes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"


def start_devices(port: int, prefix: str, names: list[str], hosts: int, work: Path) -> list[subprocess.Popen[str]]:
    """fleet_bench.py's device host processes; returns once every device is connected."""
    from bench.fleet_bench import Accepts

    accepts = Accepts()
    procs = []
    per = (len(names) + hosts - 1) // hosts
    for h in range(hosts):
        chunk = names[h * per:(h + 1) * per]
        if not chunk:
            continue
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "fleet_bench.py"), "--worker", str(port), prefix,
             str(work / f"host{h}"), ",".join(chunk)], stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        procs.append(proc)
        threading.Thread(target=accepts.follow, args=(proc,), daemon=True).start()
    deadline = time.monotonic() + 600
    while accepts.ready < len(procs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("device hosts did not come up")
        time.sleep(0.2)
    return procs


async def raw_read(port: int, prefix: str, n: int) -> float:
    """Seconds for a fresh MQTT client to receive the N retained reported and presence messages."""
    import aiomqtt

    t0 = time.monotonic()
    seen: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-raw-{os.getpid()}-{time.time_ns()}",
                              protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=0) as client:
        await client.subscribe(f"{prefix}/+/reported")
        await client.subscribe(f"{prefix}/+/presence")
        async for message in client.messages:
            seen.add(str(message.topic))
            if len(seen) >= 2 * n:
                break
    return time.monotonic() - t0


async def edgectl_read(port: int, prefix: str, n: int) -> float:
    from edge_shared.mqtt_config import MqttSection
    from edge_shared.mqtt_params import broker_params
    from edgectl.client import FleetClient

    t0 = time.monotonic()
    section = MqttSection(host="127.0.0.1", port=port, topic_prefix=prefix)
    async with FleetClient(broker_params(section, f"bench-edgectl-{time.time_ns()}"), prefix) as fleet:
        views = await fleet.devices()
    assert len(views) >= n, len(views)
    return time.monotonic() - t0


class Witness:
    """A raw subscriber to one topic, in its own thread: when the next message arrived."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        self.ready = threading.Event()
        self.arrived: float | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        self.ready.wait(30)

    async def _run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"bench-w-{time.time_ns()}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            await client.subscribe(self.topic, options=SubscribeOptions(qos=1, retainHandling=2))
            self.ready.set()
            async for _ in client.messages:
                self.arrived = time.monotonic()
                return


def publish(port: int, topic: str, payload: bytes, retain: bool = True) -> float:
    """QoS 1 publish; returns the moment the broker acknowledged it."""
    import aiomqtt

    async def go() -> float:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-p-{time.time_ns()}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.publish(topic, payload, qos=1, retain=retain)
            return time.monotonic()

    return asyncio.run(go())


def off_loop(fn: Any, *args: Any) -> Any:
    """Run `fn` in a worker thread (Playwright's sync API keeps an event loop running in this one)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--changes", type=int, default=10, help="presence changes timed (default 10)")
    parser.add_argument("--renders", type=int, default=5, help="first renders timed (default 5)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from devinfra.mosquitto import Mosquitto
    from edge_shared import protocol

    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    prefix = "db"
    broker = Mosquitto(work / "mosquitto", extra_conf="max_queued_messages 10000\n").start()
    names = [f"dev{i:04d}" for i in range(n)]
    hosts: list[subprocess.Popen[str]] = []
    board: subprocess.Popen[str] | None = None
    results: dict[str, Any] = {"devices": n}
    try:
        t = time.monotonic()
        hosts = start_devices(broker.port, prefix, names, args.hosts, work)
        results["devicesUpS"] = round(time.monotonic() - t, 1)
        time.sleep(3)  # first reported documents settle
        raw = [asyncio.run(raw_read(broker.port, prefix, n)) for _ in range(3)]
        edgectl = [asyncio.run(edgectl_read(broker.port, prefix, n)) for _ in range(3)]

        launched = time.monotonic()
        board = subprocess.Popen(
            [sys.executable, "-m", "edgectl.cli", "dashboard", "--broker", "127.0.0.1", "--port",
             str(broker.port), "--prefix", prefix, "--listen", "127.0.0.1:0", "--state", str(work / "none.db")],
            stdout=subprocess.PIPE, stderr=(work / "dashboard.log").open("w"), text=True, cwd=REPO,
        )
        assert board.stdout is not None
        url = board.stdout.readline().split()[-1]
        rows_js = f"() => document.querySelectorAll('#fleet-table tr[data-device]').length === {n}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox"] if os.geteuid() == 0 else [])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            while True:  # the dashboard's own start: until its page lists every device
                page.goto(url)
                if page.evaluate(rows_js):
                    break
                time.sleep(0.2)
            start_to_listed = time.monotonic() - launched

            http, render = [], []
            for _ in range(args.renders):
                t0 = time.monotonic()
                with urllib.request.urlopen(url, timeout=60) as answer:
                    body = answer.read()
                http.append(time.monotonic() - t0)
                t0 = time.monotonic()
                page.goto(url, wait_until="commit")
                page.wait_for_function(rows_js, timeout=60_000)
                render.append(time.monotonic() - t0)
            results["pageBytes"] = len(body)

            # State changes: a device offline, then back online, shown on the open page.
            page.goto(url)
            page.wait_for_function(rows_js, timeout=60_000)
            page.wait_for_function("() => document.getElementById('live-status').textContent === 'live'")
            page.evaluate("window.__sameDocument = true")
            shown, floor = [], []
            for i in range(args.changes):
                device = names[(i * 97) % n]
                for status in ("offline", "online"):
                    topic = f"{prefix}/{device}/presence"
                    witness = Witness(broker.port, topic)
                    acked = off_loop(publish, broker.port, topic, protocol.presence_payload(status))
                    page.wait_for_function(
                        f"() => (document.querySelector(\"tr[data-device='{device}'] td:nth-child(2)\") || {{}})"
                        f".textContent === '{status}'", timeout=30_000, polling=10,
                    )
                    shown.append(time.monotonic() - acked)
                    witness.thread.join(10)
                    if witness.arrived is not None:
                        floor.append(witness.arrived - acked)
            assert page.evaluate("window.__sameDocument") is True

            # A deployment to one device, until the page shows the version the device reports.
            deploys, deploy_floor = [], []
            from edge_shared.mqtt_config import MqttSection
            from edge_shared.mqtt_params import broker_params
            from edgectl.client import FleetClient

            section = MqttSection(host="127.0.0.1", port=broker.port, topic_prefix=prefix)
            for i in range(3):
                device = names[(i * 331 + 5) % n]
                witness = Witness(broker.port, f"{prefix}/{device}/reported")

                async def deploy(target: str = device) -> tuple[float, int]:
                    async with FleetClient(broker_params(section, f"bench-deploy-{time.time_ns()}"), prefix) as fl:
                        published = await fl.deploy(target, {"modules": {"app": {"image": "registry.local/a:1"}}})
                        return time.monotonic(), published.version

                acked, version = off_loop(asyncio.run, deploy())
                # the version it runs (column 6), or its state word for a newer version (column 7)
                page.wait_for_function(
                    f"() => {{ const r = document.querySelector(\"tr[data-device='{device}']\"); "
                    f"return r && (r.cells[5].textContent.trim() === '{version}' || "
                    f"r.cells[6].textContent.includes('{version} ')); }}", timeout=60_000, polling=10,
                )
                deploys.append(time.monotonic() - acked)
                witness.thread.join(30)
                if witness.arrived is not None:
                    deploy_floor.append(witness.arrived - acked)
            browser.close()
    finally:
        if board is not None:
            board.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                board.wait(20)
        for proc in hosts:
            proc.terminate()
        for proc in hosts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            if proc.poll() is None:
                proc.kill()
        broker.stop()

    def line(what: str, values: list[float]) -> str:
        return (f"{what:<66} {statistics.median(values) * 1000:>9.0f} {pct(values, 1.0) * 1000:>9.0f}"
                f" {len(values):>4}")

    print(f"edgectl dashboard, {n} lightweight devices in {len(hosts)} host processes (up in "
          f"{results['devicesUpS']} s), one mosquitto on 127.0.0.1, Chromium {CHROMIUM} headless, "
          f"{os.cpu_count()} cores; fleet page {results['pageBytes'] / 1024:.0f} KiB")
    print(f"{'':<66} {'p50 ms':>9} {'max ms':>9} {'runs':>4}")
    print(line("floor: raw MQTT read of the N retained reports + presences", raw))
    print(line("floor: edgectl's read (FleetClient.devices, as edgectl devices)", edgectl))
    print(line("first render: HTTP GET of the fleet page (server, to last byte)", http))
    print(line(f"first render: browser opens the fleet page until {n} rows shown", render))
    print(f"{'dashboard start: process launched -> page lists every device':<66} {start_to_listed * 1000:>9.0f}")
    print(line("floor: presence change acknowledged -> raw subscriber has it", floor))
    print(line("presence change acknowledged -> open fleet page shows it", shown))
    print(line("floor: deploy acknowledged -> device's new report at a raw subscriber", deploy_floor))
    print(line("deploy acknowledged -> open fleet page shows the device's version", deploys))
    print(json.dumps({**results, "rawReadS": raw, "edgectlReadS": edgectl, "httpS": http, "renderS": render,
                      "startToListedS": start_to_listed, "changeShownS": shown, "changeFloorS": floor,
                      "deployShownS": deploys, "deployFloorS": deploy_floor}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
