"""Fleet deploy: one deployment to N devices at once, as `edgectl deploy` publishes it (one
subscription each for the fleet's retained documents and reports, documents made locally, QoS 1
publishes on one connection with 64 in flight), against the raw floor: `mosquitto_pub -q 1 -l`
sending N messages of the same size, received by one subscriber.

    python bench/fleet_bench.py [--devices 100,300,1000] [--hosts 4] [--brokers 1] [--before]
                                [--wait] [--sequential-max 0] [--state-dir DIR] [--profile DIR]

The devices are lightweight: real edge-agent twin and desired-state code (TwinComponent: the MQTT
session with its persistent session, reported state; DesiredStateManager: the document gate, the
commit transaction in each device's own SQLite state.db with FULL sync, the replay-floor file)
with an image verifier that answers at once and no containers (no podman: passes record nothing,
no healthcheck ticks; the hand-over to the reconciler is the "accepted" moment). Real agents cost
about 54 MB and a second of CPU to start each (tests/integration/fleet/test_rollout.py runs 21 of
them); these cost about 0.4 MB, so 10,000 fit on a 2-core machine. They run in --hosts worker
processes (one event loop each; device i in host i % H and on broker i % K), which print the
wall-clock time each device accepted. Documents are unsigned (document_mode off): signing is
edgectl's cost per device (~0.1 ms), verifying the device's (bench/twin_latency.py). Plain MQTT
on 127.0.0.1, no TLS (10,000 client certificates would take long to make).

--brokers K: a central mosquitto (edgectl's) and K-1 bridged to it (MQTT 5 bridges, the prefix
both ways, QoS 1). --before: edgectl's publishing before (a task per document). --wait: edgectl
deploy --wait --until accepted, until edgectl has seen every device's report. --state-dir: where
the devices' state goes (/dev/shm: tmpfs, so the simulated devices do not share one disk's
fsyncs, as real devices do not). --profile: cProfile of edgectl (the largest deploy) and of the
device hosts (from READY), top functions printed. Each row shows the CPU seconds of edgectl (its
thread), the brokers and the device hosts (/proc). The bench raises its soft open-files limit to
what its largest host or broker needs (inherited by both).

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
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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


_lines: list[str] = []


def report_line(line: str) -> None:
    """Hand a line to the bench: written with the others of the next 20 ms in one write (the time
    is in the line; a write and flush per accepted document cost the device hosts ~0.5 ms each)."""
    if not _lines:
        asyncio.get_running_loop().call_later(0.02, _write_lines)
    _lines.append(line)


def _write_lines() -> None:
    sys.stdout.write("".join(_lines))
    sys.stdout.flush()
    _lines.clear()


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
        report_line(f"ACCEPT {self.device} {deployment.version} {time.time():.6f}\n")

    async def verify(self, reference: str) -> Any:
        from edge_shared.trust.api import VerifiedImage

        return VerifiedImage(reference, reference.rsplit(":", 1)[0], "sha256:" + "0" * 64, "off", None)

    async def run(self, connected: asyncio.Event) -> None:
        from edge_agent.deployment.reconciler import PassResult, Reconciler
        from edge_agent.deployment.store import ReconcilerStore
        from edge_agent.desired.manager import DesiredStateManager
        from edge_agent.desired.store import Transition
        from edge_agent.reported import ReportedState
        from edge_agent.store import open_state_db
        from edge_agent.twin.component import TwinComponent
        from tests.fakes.runtime import FakeRuntime

        db = open_state_db(self.config.state.dir)
        reported = ReportedState()
        class HandOver(Reconciler):
            """No containers: a pass records nothing, so the device's work is the document's
            (gate, commit, report); a real device runs its passes on its own CPU."""

            async def run_pass(self, committed: Any, last_known_good: int | None,
                               still_current: Callable[[], bool] = lambda: True) -> PassResult:
                return PassResult(committed.version if committed is not None else None, None)

        reconciler = HandOver(self.config, ReconcilerStore(db), FakeRuntime())
        room = DesiredStateManager(self.config, db, reported, self, reconciler)
        apply = room.store.apply

        def committing(transition: Transition) -> None:  # the moment a document is accepted
            apply(transition)
            if transition.accepted is not None and transition.current is not None:
                self.activate(transition.current)

        room.store.apply = committing  # type: ignore[method-assign]
        # No containers, so no healthchecks: the monitor's 4 ticks a second per device would be
        # 40,000 idle wake-ups a second across 10,000 devices on this machine's 2 cores.
        async def no_healthchecks() -> None:
            await asyncio.Event().wait()

        room.monitor.watch_health = no_healthchecks  # type: ignore[method-assign]
        await room.start()
        twin = TwinComponent(self.config, reported, room.submit)
        tasks = [asyncio.create_task(room.run()), asyncio.create_task(twin.run())]
        await twin.session._connected.wait()
        connected.set()
        await asyncio.gather(*tasks)


async def host_main(devices: list[str], port: int, prefix: str, work: Path, on_ready: Any = None) -> None:
    """Run `devices` in this process; an entry "NAME@PORT" connects that device to the broker on
    PORT instead of `port` (devices spread over bridged brokers)."""
    logging.getLogger("edge_agent").setLevel(logging.ERROR)
    events = []
    tasks = []
    for i, entry in enumerate(devices):
        device, _, own_port = entry.partition("@")
        ev = asyncio.Event()
        events.append(ev)
        light = LightDevice(device, int(own_port or port), prefix, work / device)
        tasks.append(asyncio.create_task(light.run(ev)))
        if i % 25 == 24:
            await asyncio.sleep(0.05)  # do not storm the broker with hundreds of handshakes at once
    for ev in events:
        await ev.wait()
    if on_ready is not None:
        on_ready()
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
        seen = 0  # wanted[:seen] have accepted: each look goes on from the first still missing
        while time.monotonic() < deadline:
            with self.lock:
                while seen < len(wanted) and wanted[seen] in self.times:
                    seen += 1
                if seen == len(wanted):
                    return [self.times[w] for w in wanted]
            time.sleep(0.02)
        with self.lock:
            missing = [w for w in wanted if w not in self.times]
        raise SystemExit(f"{len(missing)} devices did not accept within {timeout:.0f} s, e.g. {missing[:3]}")


async def publish_deployment(fleet: Any, devices: list[str]) -> tuple[float, dict[str, Any]]:
    """edgectl deploy's path now: read the fleet's documents and reports, make the documents,
    publish them; (start, device -> Published)."""
    from edgectl.cli import DEPLOY_LEAVES

    t0 = time.time()
    await fleet.watch(None if len(devices) > 50 else devices, leaves=DEPLOY_LEAVES)
    prepared = {d: fleet.prepare(fleet.cached_view(d), MANIFEST) for d in devices}
    results = await fleet.publish_many([(d, payload) for d, (_, payload) in prepared.items()])
    failed = [d for d, e in results.items() if e is not None]
    if failed:
        raise SystemExit(f"publish failed for {failed[:3]}")
    return t0, {d: p for d, (p, _) in prepared.items()}


async def deploy_concurrent(fleet: Any, devices: list[str]) -> tuple[float, float, dict[str, int]]:
    """edgectl deploy: (start, all PUBACKs, versions)."""
    t0, published = await publish_deployment(fleet, devices)
    return t0, time.time(), {d: p.version for d, p in published.items()}


async def deploy_and_wait(fleet: Any, devices: list[str]) -> tuple[float, float, dict[str, int]]:
    """edgectl deploy --wait --until accepted: (start, the moment edgectl saw the last device
    report its document accepted, versions)."""
    t0, published = await publish_deployment(fleet, devices)
    await asyncio.gather(*(fleet.wait_for(p, "accepted", 600) for p in published.values()))
    return t0, time.time(), {d: p.version for d, p in published.items()}


async def deploy_before(fleet: Any, devices: list[str]) -> tuple[float, float, dict[str, int]]:
    """edgectl deploy's publishing before this change: a task per document, each waiting for its
    own PUBACK, at most 64 at once."""
    from edge_shared.protocol import DeviceTopics

    t0 = time.time()
    await fleet.watch(None if len(devices) > 50 else devices)
    prepared = {d: fleet.prepare(fleet.cached_view(d), MANIFEST) for d in devices}
    gate = asyncio.Semaphore(64)

    async def one(device: str, payload: bytes) -> None:
        async with gate:
            await fleet._publish(DeviceTopics(fleet.prefix, device).desired, payload, retain=True)

    async with asyncio.TaskGroup() as tg:
        for d, (_, payload) in prepared.items():
            tg.create_task(one(d, payload))
    return t0, time.time(), {d: p.version for d, (p, _) in prepared.items()}


async def deploy_sequential(fleet: Any, devices: list[str]) -> tuple[float, float, dict[str, int]]:
    """edgectl deploy's path before this change: device after device (view, next version, publish)."""
    t0 = time.time()
    versions = {}
    for d in devices:
        versions[d] = (await fleet.deploy(d, MANIFEST)).version
    return t0, time.time(), versions


def raw_publish(port: int, sub_port: int, prefix: str, n: int, size: int) -> tuple[float, list[float]]:
    """mosquitto_pub -q 1 -l: n messages of `size` bytes to the broker on `port`, received by one
    subscriber on the broker on `sub_port` (the same one, or a leaf bridged to it)."""
    import aiomqtt

    topic = f"{prefix}/fleet/responses/bench-raw"
    received: list[float] = []
    ready = threading.Event()
    done = threading.Event()

    async def sub() -> None:
        async with aiomqtt.Client("127.0.0.1", sub_port, identifier=f"bench-sub-{os.getpid()}",
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


FDS_PER_DEVICE = 4  # its MQTT socket, state.db and its WAL and shm files (measured: /proc/PID/fd)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (inherited by the brokers and device hosts started
    from here) to `needed`, within the hard limit; exit with what is missing when it does not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if ceiling > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    if ceiling < needed:
        raise SystemExit(f"the bench needs {needed} open files per process (one broker with every device, or one "
                         f"host's devices x {FDS_PER_DEVICE}); the hard limit is {hard}: use more --brokers/--hosts "
                         "or raise the hard limit (ulimit -Hn)")
    return max(soft, ceiling)


def bridge_conf(name: str, central_port: int, prefix: str) -> str:
    """A leaf broker's bridge to the central one: everything under the prefix both ways, QoS 1,
    as an MQTT 5 bridge (retained flags are kept across it)."""
    return (f"connection {name}\naddress 127.0.0.1:{central_port}\ntopic {prefix}/# both 1\n"
            "bridge_protocol_version mqttv50\ncleansession true\ntry_private true\nnotifications false\n")


def wait_bridged(central_port: int, leaf_port: int, prefix: str) -> None:
    """A message published on the leaf reaches the central broker and one published there reaches
    the leaf: the bridge is up."""
    import aiomqtt

    async def probe(from_port: int, to_port: int) -> None:
        topic = f"{prefix}/bench-probe/{from_port}-{to_port}"
        async with aiomqtt.Client("127.0.0.1", to_port, identifier=f"probe-r-{from_port}-{to_port}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as reader:
            await reader.subscribe(topic, qos=1)
            async with asyncio.timeout(60):
                while True:
                    async with aiomqtt.Client("127.0.0.1", from_port, identifier=f"probe-w-{from_port}-{to_port}",
                                              protocol=aiomqtt.ProtocolVersion.V5) as writer:
                        await writer.publish(topic, b"x", qos=1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            async for _ in reader.messages:
                                return

    asyncio.run(probe(leaf_port, central_port))
    asyncio.run(probe(central_port, leaf_port))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def profile_summary(paths: list[str], limit: int) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(*paths, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="100,300,1000", help="fleet sizes, comma-separated (default 100,300,1000)")
    parser.add_argument("--hosts", type=int, default=4, help="device host processes (default 4)")
    parser.add_argument("--brokers", type=int, default=1,
                        help="mosquittos: 1, or a central one (edgectl's) and leaves bridged to it, devices spread "
                             "over all of them (default 1)")
    parser.add_argument("--before", action="store_true",
                        help="also measure edgectl's publishing before this change (a task and a PUBACK wait per "
                             "document, at most 64 in flight)")
    parser.add_argument("--wait", action="store_true",
                        help="also measure edgectl deploy --wait --until accepted: until edgectl has every report")
    parser.add_argument("--sequential-max", type=int, default=0,
                        help="also measure the device-after-device way up to this fleet size (default 0: not)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the devices' state.db files go (default: the system's temporary directory; "
                             "/dev/shm: tmpfs, so the devices do not share one disk's fsyncs)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile edgectl (largest size) and the device hosts "
                        "(from READY to the end) into DIR, and print the top functions")
    parser.add_argument("--worker", nargs=4, metavar=("PORT", "PREFIX", "WORKDIR", "DEVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    from devinfra.mosquitto import Mosquitto
    from edge_shared import protocol
    from edge_shared.mqtt_config import MqttSection
    from edge_shared.mqtt_params import broker_params
    from edgectl.client import FleetClient

    sizes = sorted({int(x) for x in args.devices.split(",")})
    total = sizes[-1]
    brokers_n = max(1, args.brokers)
    per_host = -(-total // args.hosts)
    per_broker = -(-total // brokers_n)
    fd_limit = raise_fd_limit(max(per_broker + 256, per_host * FDS_PER_DEVICE + 256))
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=args.state_dir))
    prefix = "fb"
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
        for old in profile_dir.glob("host.*"):
            old.unlink()
    conf = ""  # the shipped per-client queue bound (devinfra/mosquitto.py, docs/protocol.md)
    brokers: list[Any] = []
    names = [f"dev{i:05d}" for i in range(total)]
    hosts: list[subprocess.Popen[str]] = []
    accepts = Accepts()
    rows: list[str] = []
    try:
        brokers.append(Mosquitto(work / "broker0", extra_conf=conf).start())
        for b in range(1, brokers_n):
            leaf = Mosquitto(work / f"broker{b}")
            leaf.extra_conf = conf + bridge_conf(f"leaf{b}", brokers[0].port, prefix)
            brokers.append(leaf.start())
            wait_bridged(brokers[0].port, leaf.port, prefix)
        broker_pids = [b.proc.proc.pid for b in brokers]
        # Device i on broker i % K and in host i % H: every host and broker gets its share of
        # each deployment from the start (a host with the first quarter of the fleet would
        # otherwise idle while the last quarter's documents are still being published).
        port_of = {d: brokers[i % brokers_n].port for i, d in enumerate(names)}
        t_start = time.monotonic()
        env = {**os.environ, **({"FLEET_BENCH_PROFILE": str(profile_dir / "host")} if profile_dir else {})}
        for h in range(args.hosts):
            chunk = names[h::args.hosts]
            if not chunk:
                continue
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(brokers[0].port), prefix, str(work / f"host{h}"),
                 ",".join(f"{d}@{port_of[d]}" for d in chunk)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env,
            )
            hosts.append(proc)
            threading.Thread(target=accepts.follow, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + 1800
        while accepts.ready < len(hosts):
            if time.monotonic() > deadline or any(p.poll() is not None for p in hosts):
                raise SystemExit("device hosts did not come up")
            time.sleep(0.2)
        startup = time.monotonic() - t_start
        load_start = os.getloadavg()[0]
        time.sleep(3)  # first reported documents settle
        rss_hosts = sum(rss_mib(p.pid) for p in hosts)
        rss_brokers = sum(rss_mib(pid) for pid in broker_pids)
        section = MqttSection(host="127.0.0.1", port=brokers[0].port, topic_prefix=prefix)
        doc_size = len(protocol.encode({"version": 1, "deployment": MANIFEST, "meta": {"deployedAt": 0, "by": "x"}}))

        def run(kind: str, n: int) -> None:
            devices = names[:n]
            profile = None
            if profile_dir is not None and kind == "concurrent" and n == total:
                import cProfile

                profile = cProfile.Profile()

            async def go() -> tuple[float, float, dict[str, int]]:
                client = FleetClient(broker_params(section, f"edgectl-bench-{kind}-{n}"), prefix)
                async with client as fleet:
                    how = {"concurrent": deploy_concurrent, "before": deploy_before,
                           "sequential": deploy_sequential, "wait": deploy_and_wait}[kind]
                    return await how(fleet, devices)

            brk0 = sum(cpu_seconds(pid) for pid in broker_pids)
            hosts0 = sum(cpu_seconds(p.pid) for p in hosts)
            me0 = thread_cpu()
            if profile:
                profile.enable()
            t0, t_pub, versions = asyncio.run(go())
            if profile:
                profile.disable()
                assert profile_dir is not None
                profile.dump_stats(profile_dir / "edgectl.prof")
            me = thread_cpu() - me0
            times = accepts.wait([(d, versions[d]) for d in devices], timeout=600)
            brk = sum(cpu_seconds(pid) for pid in broker_pids) - brk0
            dev = sum(cpu_seconds(p.pid) for p in hosts) - hosts0
            p50, p99, wall = stats(t0, times)
            label = {"concurrent": "edgectl deploy (now)", "before": "edgectl deploy (before)",
                     "wait": "edgectl deploy --wait (publish s: all seen)",
                     "sequential": "edgectl deploy, one after another (older)"}[kind]
            rows.append(f"{n:>6} {label:<44} {wall:>8.2f} {t_pub - t0:>9.2f} {p50:>8.2f} {p99:>8.2f} "
                        f"{me:>8.2f} {brk:>8.2f} {dev:>8.2f}")
            time.sleep(2 + n / 1000)  # the devices' reports after the accept settle

        for n in sizes:
            brk0 = sum(cpu_seconds(pid) for pid in broker_pids)
            t0, received = raw_publish(brokers[0].port, brokers[-1].port, prefix, n, doc_size)
            brk = sum(cpu_seconds(pid) for pid in broker_pids) - brk0
            p50, p99, wall = stats(t0, received)
            rows.append(f"{n:>6} {'raw mosquitto_pub -q 1 -l (floor)':<44} {wall:>8.2f} {'':>9} {p50:>8.2f} "
                        f"{p99:>8.2f} {'':>8} {brk:>8.2f} {'':>8}")
            if args.before:
                run("before", n)
            run("concurrent", n)
            if args.wait:
                run("wait", n)
            if n <= args.sequential_max:
                run("sequential", n)
    finally:
        for proc in hosts:
            proc.terminate()
        for proc in hosts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
            if proc.poll() is None:
                proc.kill()
        for broker in reversed(brokers):
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    where = "one mosquitto 2" if brokers_n == 1 else f"{brokers_n} mosquitto 2 (a central one, {brokers_n - 1} " \
        "bridged to it; devices spread over all)"
    load_end = os.getloadavg()[0]
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(work.parent)], capture_output=True, text=True).stdout.strip()
    print(f"fleet deploy to N devices, {where} on 127.0.0.1 (plain MQTT 5), {total} lightweight devices "
          f"(state on {fs} {work.parent}) in "
          f"{len(hosts)} host processes (started in {startup:.0f} s; RSS: hosts {rss_hosts:.0f} MiB, brokers "
          f"{rss_brokers:.0f} MiB; open files allowed {fd_limit}), ~{doc_size} B documents, {os.cpu_count()} cores, "
          f"load average {load_start:.1f} -> {load_end:.1f} (the machine is shared)")
    print(f"{'N':>6} {'how':<44} {'wall s':>8} {'publish s':>9} {'p50 s':>8} {'p99 s':>8} {'ctl cpu':>8} "
          f"{'brk cpu':>8} {'dev cpu':>8}")
    for line in rows:
        print(line)
    print("wall: command start -> last device accepted; publish: -> last PUBACK; p50/p99: per-device accept "
          "after the command started; cpu: CPU seconds of edgectl (its thread), the brokers and the device hosts "
          "during the measurement; floor: one subscriber on the " + ("broker" if brokers_n == 1 else "last leaf"))
    print(json.dumps({"devices": total, "hostStartupS": round(startup, 1), "brokers": brokers_n,
                      "hosts": len(hosts)}))
    if profile_dir is not None:
        print("\n== edgectl (largest deploy)\n" + profile_summary([str(profile_dir / "edgectl.prof")], 25))
        host_files = sorted(str(p) for p in profile_dir.glob("host.*"))
        if host_files:
            print("== device hosts (all, READY -> end)\n" + profile_summary(host_files, 25))
    return 0


def worker(port: str, prefix: str, workdir: str, devices: str) -> int:
    import cProfile
    import signal

    prof_path = os.environ.get("FLEET_BENCH_PROFILE")
    prof = cProfile.Profile() if prof_path else None
    # The devices are simulated on the fleet side's machine; on a real fleet each has its own CPU.
    # FLEET_BENCH_NICE=10 keeps them from starving edgectl and the brokers (on a machine shared
    # with other work it also gives them less than that work: default 0).
    os.nice(int(os.environ.get("FLEET_BENCH_NICE", "0")))

    async def serve() -> None:
        # SIGTERM (the bench is done) cancels the devices' tasks, which then stop as in an agent
        # (a KeyboardInterrupt raised in whichever task runs would leave "never retrieved" noise).
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        await host_main(devices.split(","), int(port), prefix, Path(workdir), prof.clear if prof else None)

    if prof:
        prof.enable()
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(serve())
    if prof:
        prof.disable()
        prof.dump_stats(f"{prof_path}.{os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
