"""Deploy latency: edgectl's publish of a desired document -> the agent has accepted it (the
twin's transport, the desired-state room's document gate, image pinning and its commit
transaction in SQLite with FULL sync, the hand-over to the reconciler), over a real mosquitto
with mutual TLS. Image verification is not in this figure: the room's verifier here answers at
once (bench/verify_cost.py measures verification against a real registry). Beside it, in the
same run, the raw floor: an aiomqtt QoS 1 publish -> a subscriber receiving it on the same broker
and TLS setup.

    python bench/twin_latency.py [--updates 200]

Device side and fleet side run on separate threads with their own event loops (as they would
be separate processes); times are perf_counter stamps taken where the event happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devinfra.pki import Pki, tls_broker, unique  # noqa: E402
from devinfra.twin_env import TwinEnv  # noqa: E402
from edge_agent.config import parse_config  # noqa: E402
from edge_agent.deployment.pinned import CommittedDeployment  # noqa: E402
from edge_agent.deployment.reconciler import Reconciler  # noqa: E402
from edge_agent.deployment.store import ReconcilerStore  # noqa: E402
from edge_agent.desired.manager import DesiredStateManager  # noqa: E402
from edge_agent.desired.store import Transition  # noqa: E402
from edge_agent.reported import ReportedState  # noqa: E402
from edge_agent.store import open_state_db  # noqa: E402
from edge_agent.twin.component import TwinComponent  # noqa: E402
from edge_shared import protocol  # noqa: E402
from edge_shared.mqtt_client import make_client  # noqa: E402
from edge_shared.mqtt_params import broker_params  # noqa: E402
from edge_shared.trust.api import VerifiedImage  # noqa: E402
from tests.fakes.runtime import FakeRuntime  # noqa: E402

MANIFEST = {"modules": {f"m{i}": {"image": f"registry.local/m{i}:1.0", "env": {"A": "1"}} for i in range(5)}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class AgentThread(threading.Thread):
    """The real TwinComponent (session, parser, store) on its own event loop."""

    def __init__(self, env: TwinEnv, device: str, state_dir: Path) -> None:
        super().__init__(daemon=True)
        cert = env.pki.client(device)
        self.config = parse_config(
            f'[device]\nid = "{device}"\n[state]\ndir = "{state_dir}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {env.broker.port}\ntopic_prefix = "{env.prefix}"\ntls = true\n'
            f'ca_file = "{env.pki.ca}"\ncert_file = "{cert.cert}"\nkey_file = "{cert.key}"\n'
            "[twin]\nreport_min_interval_s = 1.0\n"
            '[trust]\ndocument_mode = "off"\n'
        )
        self.accepted: queue.Queue[tuple[int, float]] = queue.Queue()
        self.connected = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def activate(self, deployment: CommittedDeployment) -> None:
        """The moment the document is accepted (committed)."""
        self.accepted.put((deployment.version, time.perf_counter()))

    async def verify(self, reference: str) -> VerifiedImage:
        """An image verifier that answers at once (not what is measured here)."""
        repository = reference.rsplit(":", 1)[0]
        return VerifiedImage(reference, repository, "sha256:" + "0" * 64, "off", None)

    def run(self) -> None:
        logging.getLogger("edge_agent").setLevel(logging.ERROR)  # reconnect noise at shutdown
        with contextlib.suppress(Exception):
            asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
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
        self.connected.set()
        await asyncio.gather(*tasks)


class SubscriberThread(threading.Thread):
    def __init__(self, env: TwinEnv, topic: str) -> None:
        super().__init__(daemon=True)
        self.params = broker_params(env.mqtt_section(env.fleet), unique("bench-sub"))
        self.topic = topic
        self.received: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self.ready = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the broker goes away at the end of the run
            asyncio.run(self._main())

    async def _main(self) -> None:
        async with make_client(self.params) as client:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            async for message in client.messages:
                self.received.put((bytes(message.payload), time.perf_counter()))  # type: ignore[arg-type]


async def bench_deploy(env: TwinEnv, agent: AgentThread, device: str, updates: int) -> list[float]:
    samples = []
    async with env.fleet_client() as fleet:
        for version in range(1, updates + 1):
            t0 = time.perf_counter()
            await fleet.deploy(device, MANIFEST, version=version)
            got, t1 = await asyncio.to_thread(agent.accepted.get, True, 10)
            assert got == version, (got, version)
            samples.append(t1 - t0)
    return samples


async def bench_raw(env: TwinEnv, updates: int) -> list[float]:
    # A payload of the same size as the desired documents above, on a topic the fleet may use.
    topic = f"{env.prefix}/fleet/responses/bench-raw"
    sub = SubscriberThread(env, topic)
    sub.start()
    sub.ready.wait(10)
    payload_size = len(protocol.desired_document(1, MANIFEST))
    samples = []
    cert = env.fleet
    params = broker_params(env.mqtt_section(cert), unique("bench-pub"))
    async with make_client(params) as client:
        for i in range(updates):
            payload = str(i).encode().ljust(payload_size, b" ")
            t0 = time.perf_counter()
            await client.publish(topic, payload, qos=1)
            got, t1 = await asyncio.to_thread(sub.received.get, True, 10)
            assert got == payload
            samples.append(t1 - t0)
    return samples


def row(name: str, samples: list[float], base: list[float] | None) -> str:
    p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
    ratio = ""
    if base:
        ratio = f"{p50 / (percentile(base, 0.5) * 1000):>7.1f}x {p99 / (percentile(base, 0.99) * 1000):>6.1f}x"
    mean = statistics.mean(samples) * 1000
    return f"{name:<44} {len(samples):>5} {p50:>8.2f} {p99:>8.2f} {mean:>8.2f} {ratio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    (work / "pki").mkdir()
    pki = Pki(work / "pki")
    prefix = unique("bench")
    fleet = pki.client(unique("fleet"))
    broker = tls_broker(work / "mosquitto", pki, prefix, fleet.cn).start()
    try:
        env = TwinEnv(pki, broker, prefix, fleet)
        device = unique("bench-dev")
        agent = AgentThread(env, device, work / "state")
        agent.start()
        if not agent.connected.wait(20):
            raise SystemExit("agent did not connect")
        raw = asyncio.run(bench_raw(env, args.updates))
        deploy = asyncio.run(bench_deploy(env, agent, device, args.updates))
        raw2 = asyncio.run(bench_raw(env, args.updates))  # again, to see drift within the run
    finally:
        broker.stop()
    doc_bytes = len(protocol.desired_document(1, MANIFEST)) + 80  # + meta
    print(
        f"twin deploy latency, mosquitto 2 + mutual TLS on 127.0.0.1, {args.updates} sequential updates, "
        f"~{doc_bytes} B documents"
    )
    print(f"{'measurement':<44} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'vs raw p50/p99':>15}")
    print(row("raw aiomqtt publish -> subscribe (baseline)", raw, None))
    print(row("edgectl deploy publish -> agent accepted", deploy, raw))
    print(row("raw publish -> subscribe (again, after)", raw2, raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
