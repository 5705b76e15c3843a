"""Twin acceptance latency: edgectl's publish of a desired document -> the agent has accepted it
(the twin's transport, the desired-state room's document gate, image pinning and its commit
transaction in SQLite with FULL sync), over a real mosquitto with mutual TLS. Image verification
is not in this figure: the room's verifier here answers at once (bench/verify_cost.py measures
verification against a real registry).

The floor, measured in the same run: the raw MQTT round trip (an aiomqtt QoS 1 publish -> a
subscriber receiving it on the same broker and TLS setup) plus one durable SQLite commit (WAL,
synchronous=FULL, a row of the document's size) in the agent's state directory, i.e. on the same
disk. The target is within 1.5x of that floor at p50 and 3x at p99.

The floor is also measured whole: the raw subscriber commits each payload it receives as one row
(same settings, same directory) before it stamps it, so its commits come one per round trip, as
the agent's do. On a virtual disk that matters: commits back to back (the commit row) take
0.05-0.1 ms, while one commit after a millisecond of other work can take ten times as long
(the flush is no longer warm); both floors and both ratios are printed. The row "each after a
1 ms idle gap" shows it without MQTT: the same commits, the process sleeping 1 ms before each
(untimed), as a device sleeps between documents.

    python bench/twin_latency.py [--updates 200] [--profile] [--signed] [--before REVISION]

--signed: the documents are signed (ECDSA P-256, as `edgectl deploy --key`) and the device
enforces signatures (document_mode = "enforce"), so the gate verifies each one; the floor's
payloads are then a signed document's size.

`edgectl deploy` first reads the device's retained view (one round trip of its own), then
publishes: "publish -> accepted" starts at the publish; "deploy call -> accepted" includes the
view. --profile runs cProfile on the agent's thread and prints where its time goes, with the
agent's stages (received -> gate -> commit -> accepted) and its garbage-collection pauses.

Device side and fleet side run on separate threads with their own event loops (as they would
be separate processes); times are perf_counter stamps taken where the event happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import itertools
import json
import logging
import os
import pstats
import queue
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devinfra.pki import Pki, tls_broker, unique  # noqa: E402
from devinfra.twin_env import TwinEnv  # noqa: E402
from edge_agent import store as agent_store  # noqa: E402
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
from edge_shared.trust.keys import generate_private_key, public_key_pem  # noqa: E402
from edgectl.client import Signer  # noqa: E402
from edgectl.documents import sign_document  # noqa: E402
from tests.fakes.runtime import FakeRuntime  # noqa: E402

MANIFEST = {"modules": {f"m{i}": {"image": f"registry.local/m{i}:1.0", "env": {"A": "1"}} for i in range(5)}}


def signer(work: Path) -> tuple[Signer, Path]:
    """A document key pair as `edgectl keygen` makes it (ECDSA P-256): edgectl's signing (a
    30-day expiry, as `edgectl deploy --key`), and the public key file the device trusts."""
    key = generate_private_key()
    public = work / "document-key.pub"
    public.write_bytes(public_key_pem(key.public_key()))

    def sign(payload: bytes) -> bytes:
        return sign_document(json.loads(payload), key)

    return sign, public


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class AgentThread(threading.Thread):
    """The real TwinComponent (session, parser, store) on its own event loop."""

    def __init__(self, env: TwinEnv, device: str, state_dir: Path, *, profile: bool = False,
                 document_key: Path | None = None) -> None:
        super().__init__(daemon=True)
        cert = env.pki.client(device)
        trust = (f'[trust]\ndocument_mode = "enforce"\ndocument_keys = ["{document_key}"]\n' if document_key
                 else '[trust]\ndocument_mode = "off"\n')
        self.config = parse_config(
            f'[device]\nid = "{device}"\n[state]\ndir = "{state_dir}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {env.broker.port}\ntopic_prefix = "{env.prefix}"\ntls = true\n'
            f'ca_file = "{env.pki.ca}"\ncert_file = "{cert.cert}"\nkey_file = "{cert.key}"\n'
            "[twin]\nreport_min_interval_s = 1.0\n" + trust
        )
        self.accepted: queue.Queue[tuple[int, float]] = queue.Queue()
        self.connected = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.profile = profile
        self.profiler = cProfile.Profile() if profile else None
        self.stages: dict[str, list[float]] = {}  # stage -> perf_counter stamps, one per document
        self.gc_pauses: list[float] = []
        self._gc_start = 0.0

    def on_thread(self, call: Callable[[], object]) -> None:
        """Run `call` on the agent's thread (its event loop) and wait for it."""
        assert self.loop is not None
        done = threading.Event()

        def run() -> None:
            call()
            done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(5)

    def stamp(self, stage: str) -> None:
        self.stages.setdefault(stage, []).append(time.perf_counter())

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.current_thread() is not self:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_start)

    def activate(self, deployment: CommittedDeployment) -> None:
        """The moment the document is accepted (committed)."""
        now = time.perf_counter()
        self.stages.setdefault("accepted (committed)", []).append(now)
        self.accepted.put((deployment.version, now))

    async def verify(self, reference: str) -> VerifiedImage:
        """An image verifier that answers at once (not what is measured here)."""
        if reference.startswith("registry.local/m0:"):
            self.stamp("pinning starts")
        repository = reference.rsplit(":", 1)[0]
        return VerifiedImage(reference, repository, "sha256:" + "0" * 64, "off", None)

    def run(self) -> None:
        logging.getLogger("edge_agent").setLevel(logging.ERROR)  # reconnect noise at shutdown
        if self.profile:
            gc.callbacks.append(self._on_gc)
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

        await room.start()
        room_submit = room.submit

        # Stage stamps (a perf_counter call each): where a document's time goes.
        def committing_stamped(transition: Transition) -> None:
            self.stamp("commit starts")
            committing(transition)

        def submit_stamped(raw: bytes) -> object:
            self.stamp("received by the room")
            decision = room_submit(raw)
            self.stamp("gate done (admitted)")
            return decision

        room.store.apply = committing_stamped  # type: ignore[method-assign]
        twin = TwinComponent(self.config, reported, submit_stamped)
        tasks = [asyncio.create_task(room.run()), asyncio.create_task(twin.run())]
        await twin.session._connected.wait()
        self.connected.set()
        await asyncio.gather(*tasks)


class SubscriberThread(threading.Thread):
    """A raw aiomqtt subscriber; with `commit_to`, it also commits each payload it receives as
    one row (BEGIN IMMEDIATE, one upsert, COMMIT) in that database before stamping it."""

    def __init__(self, env: TwinEnv, topic: str, commit_to: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.params = broker_params(env.mqtt_section(env.fleet), unique("bench-sub"))
        self.topic = topic
        self.commit_to = commit_to
        self.received: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self.ready = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the broker goes away at the end of the run
            asyncio.run(self._main())

    async def _main(self) -> None:
        db = agent_store.open_db(self.commit_to, synchronous="FULL") if self.commit_to is not None else None
        if db is not None:
            db.execute("CREATE TABLE IF NOT EXISTS doc (id INTEGER PRIMARY KEY, payload BLOB)")
        async with make_client(self.params) as client:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            async for message in client.messages:
                payload = bytes(message.payload)
                if db is not None:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("INSERT OR REPLACE INTO doc (id, payload) VALUES (1, ?)", (payload,))
                    db.execute("COMMIT")
                self.received.put((payload, time.perf_counter()))


async def bench_deploy(env: TwinEnv, agent: AgentThread, device: str, updates: int, sign: Signer | None = None,
                       ) -> tuple[list[float], list[float]]:
    """(publish -> accepted, deploy call -> accepted): `edgectl deploy` is view + publish; the
    publish is stamped where FleetClient hands the payload to the broker (after signing)."""
    from_publish, from_call = [], []
    async with env.fleet_client() as fleet:
        publish = fleet._publish
        stamps: list[float] = []

        async def stamped(*args: object, **kwargs: object) -> None:
            stamps.append(time.perf_counter())
            agent.stamp("published")
            await publish(*args, **kwargs)  # type: ignore[arg-type]

        fleet._publish = stamped  # type: ignore[method-assign]
        for version in range(1, updates + 1):
            stamps.clear()
            t_call = time.perf_counter()
            await fleet.deploy(device, MANIFEST, version=version, sign=sign)
            got, t1 = await asyncio.to_thread(agent.accepted.get, True, 10)
            assert got == version, (got, version)
            from_publish.append(t1 - stamps[0])
            from_call.append(t1 - t_call)
    return from_publish, from_call


def bench_commit(state_dir: Path, updates: int, payload: bytes, gap_s: float = 0.0) -> list[float]:
    """One durable commit (WAL, synchronous=FULL: the state database's settings) of a row of a
    desired document's size, in a scratch database beside state.db (the same disk). With `gap_s`,
    the process sleeps that long before each commit (not timed), as a device does between
    documents."""
    path = state_dir / f"bench-floor-{gap_s:g}.db"
    db = agent_store.open_db(path, synchronous="FULL")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS doc (id INTEGER PRIMARY KEY, payload BLOB)")
        samples = []
        for i in range(updates):
            if gap_s:
                time.sleep(gap_s)
            t0 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR REPLACE INTO doc (id, payload) VALUES (1, ?)", (payload + str(i).encode(),))
            db.execute("COMMIT")
            samples.append(time.perf_counter() - t0)
        return samples
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").unlink()


async def bench_raw(env: TwinEnv, updates: int, payload_size: int, commit_to: Path | None = None) -> list[float]:
    """Publish -> a raw subscriber received it; with `commit_to`, -> it received it and committed
    it as one row there (the floor measured whole, paced as the documents are)."""
    # A payload of the same size as the desired documents above, on a topic the fleet may use.
    topic = f"{env.prefix}/fleet/responses/{unique('bench-raw')}"  # a topic per run: earlier subscribers stay idle
    sub = SubscriberThread(env, topic, commit_to)
    sub.start()
    sub.ready.wait(10)
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


def row(name: str, samples: list[float], floor: tuple[float, float] | None) -> str:
    p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
    ratio = f"{p50 / floor[0]:>7.2f}x {p99 / floor[1]:>6.2f}x" if floor else ""
    mean = statistics.mean(samples) * 1000
    return f"{name:<46} {len(samples):>5} {p50:>8.2f} {p99:>8.2f} {mean:>8.2f} {ratio}"


def print_profile(agent: AgentThread, updates: int) -> None:
    """Where the agent's time goes: its stages per document, GC pauses, the hottest functions."""
    stages = agent.stages
    order = ["published", "received by the room", "gate done (admitted)", "pinning starts", "commit starts",
             "accepted (committed)"]
    print("\nagent stages per document (ms; from the stage before)")
    print(f"{'stage':<30} {'p50':>8} {'p99':>8} {'max':>8}")
    for before, after in itertools.pairwise(order):
        gaps = [(b - a) * 1000 for a, b in zip(stages.get(before, []), stages.get(after, []), strict=False)]
        if gaps:
            print(f"{after:<30} {percentile(gaps, .5):8.3f} {percentile(gaps, .99):8.3f} {max(gaps):8.3f}")
    if agent.profiler is None:
        return
    pauses = [p * 1000 for p in agent.gc_pauses]
    if pauses:
        print(f"GC on the agent's thread: {len(pauses)} collections, {sum(pauses):.1f} ms in all, "
              f"max {max(pauses):.2f} ms")
    out = io.StringIO()
    stats = pstats.Stats(agent.profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    print(f"\ncProfile of the agent's thread over {updates} documents (own time; cProfile slows it):")
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


def run_before(revision: str, updates: int, signed: bool) -> None:
    """This bench as it was at `revision` (exported with git archive, run as it was), first."""
    with tempfile.TemporaryDirectory(prefix="twin-bench-before-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        # Its own packages first (the venv's editable install points at this tree).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, f"{tmp}/shared", f"{tmp}/fleet"])}
        command = [sys.executable, f"{tmp}/bench/twin_latency.py", "--updates", str(updates)]
        done = subprocess.run([*command, "--signed"] if signed else command,
                              env=env, cwd=tmp, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # e.g. an older bench without --signed
        raise SystemExit(f"the bench at {revision} failed:\n{done.stderr[-2000:]}")
    out = done.stdout
    table = out.split("\n\n")[0]
    print(f"before: {revision}\n{table}\n\nafter: this tree")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="profile the agent's thread (slows it)")
    parser.add_argument("--signed", action="store_true",
                        help="signed documents (edgectl deploy --key; the device enforces signatures)")
    parser.add_argument("--before", metavar="REVISION",
                        help="first run this bench as it was at a git revision (e.g. main), for the figures before")
    args = parser.parse_args()
    if args.before:
        run_before(args.before, args.updates, args.signed)
    work = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    (work / "pki").mkdir()
    pki = Pki(work / "pki")
    prefix = unique("bench")
    fleet = pki.client(unique("fleet"))
    broker = tls_broker(work / "mosquitto", pki, prefix, fleet.cn).start()
    try:
        env = TwinEnv(pki, broker, prefix, fleet)
        device = unique("bench-dev")
        sign, document_key = signer(work) if args.signed else (None, None)
        sample = protocol.desired_document(1, MANIFEST)
        sample = sign(sample) if sign is not None else sample  # the floor's payloads: a document's size
        agent = AgentThread(env, device, work / "state", profile=args.profile, document_key=document_key)
        agent.start()
        if not agent.connected.wait(20):
            raise SystemExit("agent did not connect")
        raw = asyncio.run(bench_raw(env, args.updates, len(sample)))
        commit = bench_commit(work / "state", args.updates, sample)
        whole = asyncio.run(bench_raw(env, args.updates, len(sample), work / "state" / "bench-floor-whole.db"))
        if agent.profiler is not None:
            agent.on_thread(agent.profiler.enable)  # cProfile hooks the thread that enables it
        deploy, deploy_call = asyncio.run(bench_deploy(env, agent, device, args.updates, sign))
        if agent.profiler is not None:
            agent.on_thread(agent.profiler.disable)
        raw2 = asyncio.run(bench_raw(env, args.updates, len(sample)))  # again, to see drift within the run
        commit2 = bench_commit(work / "state", args.updates, sample)
        commit_gap = bench_commit(work / "state", args.updates, sample, gap_s=0.001)
        whole2 = asyncio.run(bench_raw(env, args.updates, len(sample), work / "state" / "bench-floor-whole2.db"))
    finally:
        broker.stop()
    raw_all, commit_all = raw + raw2, commit + commit2
    floor = tuple((percentile(raw_all, p) + percentile(commit_all, p)) * 1000 for p in (0.5, 0.99))
    whole_all = whole + whole2
    floor_whole = tuple(percentile(whole_all, p) * 1000 for p in (0.5, 0.99))
    doc_bytes = len(sample) + 80  # + meta
    print(
        f"twin acceptance latency, mosquitto 2 + mutual TLS on 127.0.0.1, {args.updates} sequential updates, "
        f"~{doc_bytes} B documents{', signed (P-256), signatures enforced' if args.signed else ''}"
    )
    print(f"{'measurement':<46} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'vs floor p50/p99':>16}")
    print(row("raw aiomqtt publish -> subscribe", raw, None))
    print(row("raw publish -> subscribe (again, after)", raw2, None))
    print(row("one SQLite commit, WAL, synchronous=FULL", commit, None))
    print(row("the same commit (again, after)", commit2, None))
    print(row("the same commit, each after a 1 ms idle gap", commit_gap, None))
    print(f"{'floor: raw round trip + one durable commit':<46} {'':>5} {floor[0]:>8.2f} {floor[1]:>8.2f}")
    print(row("raw publish -> subscriber committed it", whole, None))
    print(row("the same (again, after)", whole2, None))
    print(f"{'floor measured whole (both runs)':<46} {'':>5} {floor_whole[0]:>8.2f} {floor_whole[1]:>8.2f}")
    print(row("edgectl deploy publish -> agent accepted", deploy, floor))  # type: ignore[arg-type]
    print(row("  the same, vs the floor measured whole", deploy, floor_whole))  # type: ignore[arg-type]
    print(row("edgectl deploy call (view+publish) -> accepted", deploy_call, floor))  # type: ignore[arg-type]
    print("target: publish -> accepted within 1.50x of the floor at p50 and 3.00x at p99 "
          "(floor percentiles: both raw runs and both commit runs; the floor measured whole: both runs)")
    print_profile(agent, args.updates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
