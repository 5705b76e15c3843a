"""Broker failover against two real mosquitto brokers bridged to each other (mutual TLS and the
example ACL on both, the bridge with its own certificate): two real agents configured with both
endpoints stream telemetry, broker 1 is killed (SIGKILL), the agents move to broker 2, a fleet
subscriber on broker 2 receives every acknowledged record, first arrivals in sequence order, and a
signed deployment published afterwards (edgectl with both endpoints, the first one dead) is
accepted.

Duplicates: the protocol is at-least-once. A batch broker 1 took (and forwarded over the bridge)
whose PUBACK never reached the agent is sent again to broker 2; its records carry the same ids, so
the fleet side drops them (edgectl telemetry marks them duplicate). They are counted, not bounded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.pki import Pki, tls_broker, unique
from devinfra.podman import PodmanService, podman
from devinfra.procs import wait_until
from devinfra.registry import Registry
from devinfra.telemetry import Follower, IngestClient, assert_in_order
from tests.integration.desired.conftest import REPO, Device


class TwoBrokers:
    def __init__(self, workdir: Path, pki: Pki, prefix: str, fleet_cn: str) -> None:
        self.bridge = pki.client(unique("bridge"))
        self.one = tls_broker(workdir / "broker1", pki, prefix, fleet_cn)
        self.two = tls_broker(workdir / "broker2", pki, prefix, fleet_cn)
        for broker in (self.one, self.two):
            # The bridge's own identity may read and write the whole prefix (devices still only
            # their own subtree). No queue limit (outage tests queue more than 1000 messages);
            # no in-flight limit, so broker 1 forwards every message it takes at once.
            with (broker.workdir / "edge-agent.acl").open("a") as acl:
                acl.write(f"\nuser {self.bridge.cn}\ntopic readwrite {prefix}/#\n")
            broker.extra_conf += "max_queued_messages 0\nmax_inflight_messages 0\n"
        # Broker 2 bridges to broker 1, every topic of the prefix both ways, QoS 1, persistent.
        self.two.extra_conf += (
            "connection to-broker1\n"
            f"address 127.0.0.1:{self.one.port}\n"
            f"remote_clientid {self.bridge.cn}\n"
            f"bridge_cafile {pki.ca}\nbridge_certfile {self.bridge.cert}\nbridge_keyfile {self.bridge.key}\n"
            f"topic {prefix}/# both 1\n"
            "cleansession false\nrestart_timeout 1\ntry_private true\n"
            # No $SYS notifications: the ACL denies them, and a denied publish drops the bridge.
            "notifications false\n"
        )

    def start(self) -> None:
        self.one.start()
        self.two.start()

    def stop(self) -> None:
        self.two.stop()
        self.one.stop()


@pytest.fixture
def failover(
    tmp_path: Path, registry: Registry, podman_service: PodmanService, busybox_image: str
) -> Iterator[tuple[Device, TwoBrokers]]:
    pki = Pki(tmp_path / "pki")
    prefix = unique("fo")
    fleet = pki.client(unique("fleet"))
    brokers = TwoBrokers(tmp_path, pki, prefix, fleet.cn)
    brokers.start()
    kit = Device(tmp_path / "kit", pki, brokers.one, prefix, fleet, registry, podman_service.url, busybox_image)
    try:
        yield kit, brokers
    finally:
        ids = podman("ps", "-a", "-q", "--filter", f"name={kit.run}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)
        kit.cleanup()
        brokers.stop()


def agent_config(kit: Device, device: str, second: Mosquitto, runtime_dir: Path) -> str:
    text = kit.agent_config(device)
    text = text.replace("[mqtt]\n", f'[mqtt]\nendpoints = ["127.0.0.1:{second.port}"]\n', 1)
    return text.replace(
        "[telemetry]\nenabled = false\n",
        f'[telemetry]\nruntime_dir = "{runtime_dir}"\nmodules = ["sensor"]\n'
        "batch_max_records = 20\ninflight_batches = 4\n",
    )


def broker_section(agent: AgentProcess) -> dict[str, Any]:
    status = agent.call("status")
    assert isinstance(status, dict)
    return dict(status["reported"].get("broker") or {})


class Stream(threading.Thread):
    """A module sending telemetry as fast as the agent answers, in bursts; every id it was
    acknowledged (by the agent: durable in its queue) is kept."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(daemon=True)
        self.socket_path = socket_path
        self.acked: list[str] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with IngestClient(self.socket_path) as module:
                n = 0
                while not self.stop_event.is_set():
                    answers = module.send_many([{"stream": "pose", "payload": {"n": n + i}} for i in range(25)])
                    assert all(a["ok"] for a in answers), answers[:3]
                    self.acked += [a["id"] for a in answers]
                    n += 25
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_agents_move_to_the_second_broker_without_losing_telemetry(
    tmp_path: Path, failover: tuple[Device, TwoBrokers]
) -> None:
    kit, brokers = failover
    devices = (f"fo-a-{kit.run}", f"fo-b-{kit.run}")
    # Unix socket paths must stay short (AF_UNIX): the module sockets live in a short /tmp folder.
    short = Path(tempfile.mkdtemp(prefix="fo-", dir="/tmp"))
    agents: dict[str, AgentProcess] = {}
    followers: dict[str, Follower] = {}
    streams: dict[str, Stream] = {}
    try:
        for device in devices:
            follower = Follower(tmp_path / f"fleet-{device}", brokers.two.port, device, client_id=unique("follow"),
                                extra=kit.fleet_identity())
            followers[device] = follower.start()
        for device in devices:
            agents[device] = AgentProcess(
                tmp_path / device, agent_config(kit, device, brokers.two, short / device), env={"PYTHONPATH": str(REPO)}
            ).start()
        for device, agent in agents.items():
            wait_until(lambda a=agent: broker_section(a).get("connected") is True, 30, f"{device} to connect")
            section = broker_section(agent)
            assert section["endpoint"] == f"127.0.0.1:{brokers.one.port}" and section["index"] == 1, section
            assert section["endpoints"] == [f"127.0.0.1:{brokers.one.port}", f"127.0.0.1:{brokers.two.port}"]
        for device in devices:
            streams[device] = Stream(short / device / "ingest/sensor/telemetry.sock")
            streams[device].start()

        # Records flow over the bridge to the subscriber on broker 2 ...
        wait_until(lambda: all(len(f.distinct_ids()) > 200 for f in followers.values()), 30, "bridged telemetry")
        # ... until broker 1 is killed.
        brokers.one.kill()
        for device, agent in agents.items():
            wait_until(
                lambda a=agent: broker_section(a).get("index") == 2 and broker_section(a).get("connected") is True,
                30,
                f"{device} to move to broker 2\n{agent.log()[-3000:]}",
            )
        time.sleep(3)  # streaming on, straight to broker 2
        for stream in streams.values():
            stream.stop_event.set()
            stream.join(30)
            assert stream.error is None, stream.error

        for device, agent in agents.items():
            acked = set(streams[device].acked)
            followers[device].wait_for_ids(acked, 90)
            records = [r for r in followers[device].records() if r["stream"] == "pose"]
            assert_in_order(records)  # first arrivals in sequence order across the move
            firsts = [r for r in records if not r.get("duplicate")]
            assert [r["payload"]["n"] for r in firsts] == list(range(len(firsts)))  # none missing, none reordered
            duplicates = len(records) - len(firsts)
            print(
                f"{device}: {len(acked)} records acknowledged, all {len(firsts)} received in order on broker 2, "
                f"{duplicates} duplicates (same ids, dropped by the fleet side)"
            )
            wait_until(lambda a=agent: a.call("telemetry")["depth"] == 0, 30, "the device queue to drain")  # type: ignore[index]
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edge_agent.cli",
                    "status",
                    "--config",
                    str(agent.config_path),
                    "--state-dir",
                    str(agent.state_dir),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert f"broker      connected to 127.0.0.1:{brokers.two.port} (endpoint 2 of 2)" in status.stdout, (
                status.stdout + status.stderr
            )
            log = agent.log()
            # The move is logged once, as a warning naming both brokers.
            assert log.count("EVENT=mqtt.endpoint_switch") == 1, log[-3000:]
            assert f"broker 127.0.0.1:{brokers.one.port} is gone; moving to 127.0.0.1:{brokers.two.port}" in log
            # The same persistent session everywhere: client id = device id, session kept.
            assert f"connected to broker 127.0.0.1:{brokers.two.port} as {device}" in log

        # A signed deployment published afterwards: edgectl names both brokers, the first is dead.
        image = kit.image("app", "v1", signed=True)
        manifest = kit.manifest(image)
        out = kit.edgectl(
            "deploy",
            *kit.flags(),
            "--endpoint",
            f"127.0.0.1:{brokers.two.port}",
            *devices,
            str(manifest),
            "--key",
            str(kit.keys / "fleet.key"),
            "--wait",
            "90",
            "--until",
            "running",
        )
        assert out.returncode == 0, out.stdout + out.stderr

        async def reported_on_two() -> dict[str, dict[str, Any]]:
            from edge_shared.mqtt_config import MqttSection
            from edge_shared.mqtt_params import broker_params
            from edgectl.client import FleetClient

            section = MqttSection(
                host="127.0.0.1",
                port=brokers.two.port,
                topic_prefix=kit.prefix,
                tls=True,
                ca_file=kit.pki.ca,
                cert_file=kit.fleet.cert,
                key_file=kit.fleet.key,
            )
            async with FleetClient(broker_params(section, f"{kit.fleet.cn}-{unique()}"), kit.prefix) as fleet:
                return {d: (await fleet.view(d)).reported or {} for d in devices}

        reported = asyncio.run(reported_on_two())
        for device in devices:
            assert reported[device]["broker"]["endpoint"] == f"127.0.0.1:{brokers.two.port}", reported[device]
            assert reported[device]["deployment"]["current"] is not None, reported[device]["deployment"]
    finally:
        for stream in streams.values():
            stream.stop_event.set()
        for agent in agents.values():
            agent.stop()
        for follower in followers.values():
            follower.stop()
        shutil.rmtree(short, ignore_errors=True)
