"""Fleet deploy: one deployment to N devices at once against one mosquitto on this machine, as
`edgectl deploy` / `edgectl rollout` publish it (one subscription for the fleet's retained state,
documents made locally, QoS 1 publishes concurrent with at most 64 in flight), against the way
edgectl published before (device after device: read its state, publish, next) and against the raw
floor: `mosquitto_pub -q 1 -l` sending N messages of the same size to a subscriber.

    python bench/fleet_bench.py [--devices 100,300,1000] [--hosts 4] [--sequential-max 300]

The devices are lightweight: real edge-agent twin and desired-state code (TwinComponent: the MQTT
session with its persistent session, reported state; DesiredStateManager: the document gate,
the commit transaction in each device's own SQLite state.db with FULL sync) with an image
verifier that answers at once and no reconciler (no podman: the hand-over to the reconciler is
the "accepted" moment). Real agents cost about 54 MB and a second of CPU to start each
(tests/integration/fleet/test_rollout.py runs 21 of them); these cost a few MB, so 1,000 fit on a
2-core machine. They run in --hosts worker processes (one event loop each, K devices per loop),
which print the wall-clock time each device accepted. Documents are unsigned (document_mode off):
signing is edgectl's cost per device (~0.1 ms), verifying the device's (measured in
bench/twin_latency.py's figures). Plain MQTT on 127.0.0.1, no TLS (1,000 client certificates
would take minutes to make); broker CPU is read from /proc for the mosquitto process.

Per-device accept latency = the device's accept time - the moment the deploy command started
(before it read any state): what an operator waits for each device.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MANIFEST = {"modules": {f"m{i}": {"image": f"registry.local/m{i}:1.0", "env": {"A": "1"}} for i in range(5)}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --------------------------------------------------------------------------- device host (worker)


class LightDevice:
    """TwinComponent + DesiredStateManager of one device; prints ACCEPT lines."""

    def __init__(self, device: str, port: int, prefix: str, state_dir: Path) -> None:
        from edge_agent.config import parse_config

        self.device = device
        self.config = parse_config(
            f'[device]\nid = "{device}"\n[state]\ndir = "{state_dir}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntopic_prefix = "{prefix}"\nkeepalive_s = 120\n'
            "[twin]\nreport_min_interval_s = 1.0\nreport_stats_interval_s = 3600\n"
            '[trust]\ndocument_mode = "off"\n'
        )

    def activate(self, deployment: Any) -> None:
        """The moment the document is accepted (committed)."""
        sys.stdout.write(f"ACCEPT {self.device} {deployment.version} {time.time():.6f}\n")
        sys.stdout.flush()

    async def verify(self, reference: str) -> Any:
        from edge_shared.trust.api import VerifiedImage

        return VerifiedImage(reference, reference.rsplit(":", 1)[0], "sha256:" + "0" * 64, "off", None)

    async def run(self, connected: asyncio.Event) -> None:
        from edge_agent.deployment.reconciler import Reconciler
        from edge_agent.deployment.store import ReconcilerStore
        from edge_agent.desired.manager import DesiredStateManager
        from edge_agent.desired.store import Transition
        from edge_agent.reported import ReportedState
        from edge_agent.store import open_state_db
        from edge_agent.twin.component import TwinComponent
        from tests.fakes.runtime import FakeRuntime

        db = open_state_db(self.config.state.dir)
        reported = ReportedState()
        reconciler = Reconciler(self.config, ReconcilerStore(db), FakeRuntime())
        room = DesiredStateManager(self.config, db, reported, self, reconciler)
        apply = room.store.apply

        def committing(transition: Transition) -> None:  # the moment a document is accepted
            apply(transition)
            if transition.accepted is not None and transition.current is not None:
                self.activate(transition.current)

        room.store.apply = committing  # type: ignore[method-assign]
        await room.start()
        twin = TwinComponent(self.config, reported, room.submit)
        tasks = [asyncio.create_task(room.run()), asyncio.create_task(twin.run())]
        await twin.session._connected.wait()
        connected.set()
        await asyncio.gather(*tasks)


async def host_main(devices: list[str], port: int, prefix: str, work: Path) -> None:
    logging.getLogger("edge_agent").setLevel(logging.ERROR)
    events = []
    tasks = []
    for i, device in enumerate(devices):
        ev = asyncio.Event()
        events.append(ev)
        tasks.append(asyncio.create_task(LightDevice(device, port, prefix, work / device).run(ev)))
        if i % 25 == 24:
            await asyncio.sleep(0.05)  # do not storm the broker with hundreds of handshakes at once
    for ev in events:
        await ev.wait()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    await asyncio.gather(*tasks)


# --------------------------------------------------------------------------- fleet side


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Accepts:
    """ACCEPT lines from the device hosts: (device, version) -> wall-clock time."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()
        self.ready = 0

    def follow(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts[:1] == ["READY"]:
                with self.lock:
                    self.ready += 1
            elif parts[:1] == ["ACCEPT"] and len(parts) == 4:
                with self.lock:
                    self.times[(parts[1], int(parts[2]))] = float(parts[3])

    def wait(self, wanted: list[tuple[str, int]], timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(w in self.times for w in wanted):
                    return [self.times[w] for w in wanted]
            time.sleep(0.02)
        with self.lock:
            missing = [w for w in wanted if w not in self.times]
        raise SystemExit(f"{len(missing)} devices did not accept within {timeout:.0f} s, e.g. {missing[:3]}")


async def deploy_concurrent(fleet: Any, devices: list[str]) -> tuple[float, float, dict[str, int]]:
    """edgectl deploy's path now: (start, all PUBACKs, versions)."""
    t0 = time.time()
    await fleet.watch(None if len(devices) > 50 else devices)
    prepared = {d: fleet.prepare(fleet.cached_view(d), MANIFEST) for d in devices}
    results = await fleet.publish_many([(d, payload) for d, (_, payload) in prepared.items()])
    failed = [d for d, e in results.items() if e is not None]
    if failed:
        raise SystemExit(f"publish failed for {failed[:3]}")
    return t0, time.time(), {d: p.version for d, (p, _) in prepared.items()}


async def deploy_sequential(fleet: Any, devices: list[str]) -> tuple[float, float, dict[str, int]]:
    """edgectl deploy's path before this change: device after device (view, next version, publish)."""
    t0 = time.time()
    versions = {}
    for d in devices:
        versions[d] = (await fleet.deploy(d, MANIFEST)).version
    return t0, time.time(), versions


def raw_publish(port: int, prefix: str, n: int, size: int) -> tuple[float, list[float]]:
    """mosquitto_pub -q 1 -l: n messages of `size` bytes, received by one subscriber."""
    import aiomqtt

    topic = f"{prefix}/fleet/responses/bench-raw"
    received: list[float] = []
    ready = threading.Event()
    done = threading.Event()

    async def sub() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sub-{os.getpid()}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic, qos=1)
            ready.set()
            async for _ in client.messages:
                received.append(time.time())
                if len(received) >= n:
                    done.set()
                    return

    thread = threading.Thread(target=lambda: asyncio.run(sub()), daemon=True)
    thread.start()
    ready.wait(10)
    lines = "".join(f"{i:08d}".ljust(size, "x") + "\n" for i in range(n))
    t0 = time.time()
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-l"],
                   input=lines, text=True, check=True, timeout=300)
    done.wait(120)
    return t0, received


def stats(t0: float, times: list[float]) -> tuple[float, float, float]:
    lat = [t - t0 for t in times]
    return percentile(lat, 0.5), percentile(lat, 0.99), max(lat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="100,300,1000", help="fleet sizes, comma-separated (default 100,300,1000)")
    parser.add_argument("--hosts", type=int, default=4, help="device host processes (default 4)")
    parser.add_argument("--sequential-max", type=int, default=300,
                        help="also measure the device-after-device way up to this fleet size (default 300)")
    parser.add_argument("--worker", nargs=4, metavar=("PORT", "PREFIX", "WORKDIR", "DEVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        port, prefix, workdir, names = args.worker
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(host_main(names.split(","), int(port), prefix, Path(workdir)))
        return 0

    from devinfra.mosquitto import Mosquitto
    from edge_shared import protocol
    from edge_shared.mqtt_config import MqttSection
    from edge_shared.mqtt_params import broker_params
    from edgectl.client import FleetClient

    sizes = sorted({int(x) for x in args.devices.split(",")})
    total = sizes[-1]
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    prefix = "fb"
    broker = Mosquitto(work / "mosquitto", extra_conf="max_queued_messages 10000\n").start()
    assert broker.proc is not None and broker.proc.proc is not None
    broker_pid = broker.proc.proc.pid
    names = [f"dev{i:04d}" for i in range(total)]
    hosts: list[subprocess.Popen[str]] = []
    accepts = Accepts()
    rows: list[str] = []
    try:
        t_start = time.monotonic()
        per = (total + args.hosts - 1) // args.hosts
        for h in range(args.hosts):
            chunk = names[h * per:(h + 1) * per]
            if not chunk:
                continue
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(broker.port), prefix, str(work / f"host{h}"),
                 ",".join(chunk)], stdout=subprocess.PIPE, text=True, cwd=REPO,
            )
            hosts.append(proc)
            threading.Thread(target=accepts.follow, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + 600
        while accepts.ready < len(hosts):
            if time.monotonic() > deadline or any(p.poll() is not None for p in hosts):
                raise SystemExit("device hosts did not come up")
            time.sleep(0.2)
        startup = time.monotonic() - t_start
        time.sleep(3)  # first reported documents settle
        section = MqttSection(host="127.0.0.1", port=broker.port, topic_prefix=prefix)
        doc_size = len(protocol.encode({"version": 1, "deployment": MANIFEST, "meta": {"deployedAt": 0, "by": "x"}}))

        def run(kind: str, n: int) -> None:
            devices = names[:n]

            async def go() -> tuple[float, float, dict[str, int]]:
                client = FleetClient(broker_params(section, f"edgectl-bench-{kind}-{n}"), prefix)
                async with client as fleet:
                    return await (deploy_concurrent(fleet, devices) if kind == "concurrent"
                                  else deploy_sequential(fleet, devices))

            cpu0 = cpu_seconds(broker_pid)
            t0, t_pub, versions = asyncio.run(go())
            times = accepts.wait([(d, versions[d]) for d in devices], timeout=300)
            cpu = cpu_seconds(broker_pid) - cpu0
            p50, p99, wall = stats(t0, times)
            label = ("edgectl deploy, concurrent (now)" if kind == "concurrent"
                     else "edgectl deploy, one after another (before)")
            rows.append(f"{n:>6} {label:<44} {wall:>8.2f} {t_pub - t0:>9.2f} {p50:>8.2f} {p99:>8.2f} {cpu:>8.2f}")
            time.sleep(2)

        for n in sizes:
            cpu0 = cpu_seconds(broker_pid)
            t0, received = raw_publish(broker.port, prefix, n, doc_size)
            cpu = cpu_seconds(broker_pid) - cpu0
            p50, p99, wall = stats(t0, received)
            rows.append(f"{n:>6} {'raw mosquitto_pub -q 1 -l (floor)':<44} {wall:>8.2f} {'':>9} {p50:>8.2f} "
                        f"{p99:>8.2f} {cpu:>8.2f}")
            run("concurrent", n)
            if n <= args.sequential_max:
                run("sequential", n)
    finally:
        for proc in hosts:
            proc.terminate()
        for proc in hosts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            if proc.poll() is None:
                proc.kill()
        broker.stop()
    print(f"fleet deploy to N devices, one mosquitto 2 on 127.0.0.1 (plain MQTT 5), {total} lightweight devices "
          f"in {len(hosts)} host processes (started in {startup:.0f} s), ~{doc_size} B documents, "
          f"{os.cpu_count()} cores")
    print(f"{'N':>6} {'how':<44} {'wall s':>8} {'publish s':>9} {'p50 s':>8} {'p99 s':>8} {'brk cpu':>8}")
    for line in rows:
        print(line)
    print("wall: command start -> last device accepted; publish: -> last PUBACK; p50/p99: per-device accept "
          "after the command started; brk cpu: mosquitto CPU seconds during the measurement")
    print(json.dumps({"devices": total, "hostStartupS": round(startup, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
