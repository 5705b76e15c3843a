#!/usr/bin/env python3
"""`edgectl devices` reading a fleet of N devices (default 10,000), against a raw MQTT read of the
same retained messages in the same run.

What `edgectl devices` reads is the broker's retained `P/D/reported` and `P/D/presence` of every
device. One real lightweight device (fleet_bench.py's: the agent's twin and desired-state code)
connects first, and its retained report and presence are copied to N device ids (its id replaced
in the bytes), so the N reports have the real shape and size without N live connections.

Rows (each --runs times, interleaved; seconds):
  floor          a fresh raw MQTT client (aiomqtt) subscribing to P/+/reported and P/+/presence
                 until it holds all 2N retained messages
  FleetClient    edgectl's own read in process (FleetClient.devices: connect, subscribe, parse)
  edgectl        the command, `edgectl devices --json` as a process (start-up, read, print)

--profile prints where FleetClient.devices spends its time (cProfile, top 20 by cumulative time).

    python bench/fleet_read.py [--devices 10000] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from dashboard_bench import edgectl_read  # noqa: E402
from fleet_bench import LightDevice  # noqa: E402

from devinfra.mosquitto import MAX_QUEUED_MESSAGES, Mosquitto  # noqa: E402

PREFIX = "fleetread"
SEED = "seed-device"
TARGET_S = 5.0


async def seed_payloads(port: int, work: Path) -> tuple[bytes, bytes]:
    """The retained report and presence of one real lightweight device."""
    import aiomqtt

    connected = asyncio.Event()
    device = asyncio.create_task(LightDevice(SEED, port, PREFIX, work / SEED).run(connected))
    try:
        await asyncio.wait_for(connected.wait(), 60)
        found: dict[str, bytes] = {}
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"seed-reader-{os.getpid()}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(f"{PREFIX}/{SEED}/#")
            async with asyncio.timeout(60):
                async for message in client.messages:
                    leaf = str(message.topic).rsplit("/", 1)[1]
                    if message.retain and leaf in ("reported", "presence") and isinstance(message.payload, bytes):
                        found[leaf] = message.payload
                    if len(found) == 2:
                        break
        return found["reported"], found["presence"]
    finally:
        device.cancel()
        await asyncio.gather(device, return_exceptions=True)


async def publish_fleet(port: int, n: int, reported: bytes, presence: bytes) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=f"fleet-writer-{os.getpid()}",
                              protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=10) as client:
        room = asyncio.Semaphore(10)  # aiomqtt warns beyond 10 pending publishes

        async def one(topic: str, payload: bytes) -> None:
            async with room:
                await client.publish(topic, payload, qos=1, retain=True)

        tasks = []
        for i in range(n):
            device = f"dev-{i:05d}"
            tasks.append(one(f"{PREFIX}/{device}/reported", reported.replace(SEED.encode(), device.encode())))
            tasks.append(one(f"{PREFIX}/{device}/presence", presence.replace(SEED.encode(), device.encode())))
        await asyncio.gather(*tasks)


async def raw_read(port: int, prefix: str, n: int) -> float:
    """The floor: a fresh raw MQTT client until it holds the N retained reports and presences."""
    import aiomqtt

    t0 = time.monotonic()
    seen: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-raw-{os.getpid()}-{time.time_ns()}",
                              protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=0) as client:
        await client.subscribe([(f"{prefix}/+/reported", 0), (f"{prefix}/+/presence", 0)], timeout=120)
        async for message in client.messages:
            seen.add(str(message.topic))
            if len(seen) >= 2 * n:
                break
    return time.monotonic() - t0


def cli_read(port: int, n: int) -> float:
    env = {**os.environ, "EDGECTL_CONFIG": os.devnull + ".absent"}  # no operator config file
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgectl.cli", "--broker", "127.0.0.1", "--port", str(port),
                           "--prefix", PREFIX, "devices", "--json"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"edgectl devices failed: {done.stderr[-2000:]}")
    rows = done.stdout.count('"device"')
    if rows < n:
        raise SystemExit(f"edgectl devices listed {rows} devices, expected {n}")
    return elapsed


def profile_read(port: int, n: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(edgectl_read(port, PREFIX, n))
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(20)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    n = args.devices
    rows: dict[str, list[float]] = {"floor: raw MQTT read of N reports + presences": [],
                                    "edgectl's read in process (FleetClient.devices)": [],
                                    "edgectl devices --json (the command)": []}
    with tempfile.TemporaryDirectory(prefix="fleet-read-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto").start()  # the shipped queue bound (docs/protocol.md)
        try:
            reported, presence = asyncio.run(seed_payloads(broker.port, work))
            t0 = time.monotonic()
            asyncio.run(publish_fleet(broker.port, n, reported, presence))
            loaded = time.monotonic() - t0
            print(f"loaded {n} devices in {loaded:.1f} s", file=sys.stderr)
            for _ in range(args.runs):
                floor, fleet_client, command = rows.values()
                floor.append(asyncio.run(raw_read(broker.port, PREFIX, n)))
                fleet_client.append(asyncio.run(edgectl_read(broker.port, PREFIX, n)))
                command.append(cli_read(broker.port, n))
                print(f"run: floor {floor[-1]:.2f} s, in process {fleet_client[-1]:.2f} s, command {command[-1]:.2f} s",
                      file=sys.stderr)
            profile = profile_read(broker.port, n) if args.profile else ""
        finally:
            broker.stop()
    print(f"reading a fleet of {n} devices: one mosquitto on 127.0.0.1 (max_queued_messages {MAX_QUEUED_MESSAGES}, "
          f"as shipped), {n} retained reports of "
          f"{len(reported)} B and presences of {len(presence)} B (loaded in {loaded:.1f} s), {args.runs} runs")
    print(f"{'':52}{'p50 s':>8}{'max s':>8}{'x floor':>9}")
    floor_p50 = statistics.median(rows["floor: raw MQTT read of N reports + presences"])
    for label, values in rows.items():
        p50 = statistics.median(values)
        print(f"{label:52}{p50:8.2f}{max(values):8.2f}{p50 / floor_p50:9.2f}")
    print(f"target: edgectl devices within {TARGET_S:g} s")
    if profile:
        print(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
