"""A deterministic explorer of the device's deployment state (FoundationDB simulation / VOPR style).

The real desired-state owner (edge_agent/desired/manager.py), reconciler and state store run in one
event loop against a simulated world: a clock, a container runtime and a registry that only move
when the scheduler says so. Every await into the world parks the calling actor (the pinning task,
a reconcile pass) until the scheduler resumes it, so the interleaving is chosen by a seeded random
generator, and so are the inputs: signed documents (good, unsigned image, crashing module, refused
model, transient registry failures, duplicates, replays), podman events, container deaths, time,
and crashes: at any step, and at any durable write (just before or just after the COMMIT of a
SQLite transaction). A crash drops all of the agent's memory: the connection is closed (an open
transaction is lost, as in a power cut) and a new owner starts from the SQLite file; the world
(containers, registry, clock, the broker's retained document) survives.

After every step the invariants are checked (see `check`); a violation raises Violation naming
the seed, the step and the invariant. The same seed replays the same schedule exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.deployment.reconciler import PassResult, Reconciler
from edge_agent.deployment.rollback import Failed
from edge_agent.deployment.store import ReconcilerStore
from edge_agent.desired.admission import Admitted
from edge_agent.desired.manager import TRANSIENT_CODES, DesiredStateManager
from edge_agent.desired.store import StateStore
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import LABEL_DEPLOYMENT, LABEL_MODULE, LABEL_SPEC_HASH, ContainerRequest, ObservedContainer
from edge_agent.state_schema import migrate
from edge_shared.outcome import FAILURE_STATES, State
from edge_shared.trust import keys
from edge_shared.trust.api import ImageRejected, VerifiedImage
from edgectl.documents import sign_document
from tests.fakes.runtime import FakeRuntime

TERMINAL = frozenset({State.GOOD, *FAILURE_STATES})
KINDS = ("good", "good", "good", "unsigned", "crashing", "refused_model", "transient", "transient_artifact")
WINDOW_S = 30.0
APPLY_TIMEOUT_S = 120.0


class Crash(BaseException):
    """The device loses power here (BaseException: no agent code may catch it)."""


class Violation(AssertionError):
    pass


class ActorRanAway(AssertionError):
    pass


# ---------------------------------------------------------------------------------- the world


class SimClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Points:
    """Where actors park: every await into the world goes through `park()`."""

    def __init__(self) -> None:
        self.parked: dict[asyncio.Task[Any], tuple[str, asyncio.Future[None]]] = {}

    async def park(self, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parked[task] = (name, fut)
        try:
            await fut
        finally:
            self.parked.pop(task, None)


class SimRuntime(FakeRuntime):
    """FakeRuntime whose every call parks the caller; containers of a crashing image exit when
    time passes. `on_start` checks each start against the durable state (an invariant)."""

    def __init__(self, points: Points, clock: SimClock) -> None:
        super().__init__(clock=clock)
        self.points = points
        self.on_start: Callable[[ObservedContainer], None] = lambda c: None

    async def list_containers(self, device_id: str) -> list[ObservedContainer]:
        await self.points.park("runtime.list")
        return await super().list_containers(device_id)

    async def image_exists(self, image: str) -> bool:
        await self.points.park("runtime.image_exists")
        return await super().image_exists(image)

    async def pull(self, image: str, *, insecure: bool, timeout_s: float) -> None:
        await self.points.park("runtime.pull")
        self.images.add(image)  # the simulated registry has every image the verifier pinned

    async def create(self, request: ContainerRequest) -> str:
        await self.points.park("runtime.create")
        return await super().create(request)

    async def start(self, container: str) -> None:
        # Checked when the agent sends the start: a commit while the request is in flight (parked
        # here) cannot be seen by it; the next pass, which the commit wakes, replaces the container.
        self.on_start(self._find(container))
        await self.points.park("runtime.start")
        await super().start(container)

    async def stop(self, container: str, grace_s: float) -> None:
        await self.points.park("runtime.stop")
        await super().stop(container, grace_s)

    async def remove(self, container: str) -> None:
        await self.points.park("runtime.remove")
        await super().remove(container)

    def time_passes(self) -> None:
        for c in list(self.containers.values()):
            if c.state == "running" and "/crash" in c.image:
                self.containers[c.id] = replace(c, state="exited", exit_code=1, finished_at=self.clock())

    def running(self) -> list[ObservedContainer]:
        return [c for c in self.containers.values() if c.state == "running"]


def digest(reference: str) -> str:
    return "sha256:" + hashlib.sha256(reference.encode()).hexdigest()


class SimRegistry:
    """The image verifier: an image or artifact is good, refused for its content (final), or
    unreachable a number of times first (transient)."""

    def __init__(self, points: Points) -> None:
        self.points = points
        self.refused: set[str] = set()
        self.transient: dict[str, list[str]] = {}  # reference -> codes still to answer
        self.failed_transiently: set[str] = set()

    async def verify(self, reference: str) -> VerifiedImage:
        await self.points.park("registry.verify")
        if reference in self.refused:
            raise ImageRejected(reference, "unsigned", "no signature")
        pending = self.transient.get(reference)
        if pending:
            self.failed_transiently.add(reference)
            raise ImageRejected(reference, pending.pop(0), "the registry did not answer in full")
        repository = reference.rsplit(":", 1)[0]
        return VerifiedImage(reference, repository, digest(reference), "enforce", "sim-key")


class CrashingConnection(sqlite3.Connection):
    """A state.db connection that can lose power just before or just after a COMMIT."""

    armed: str | None = None  # "before" | "after": the next COMMIT crashes
    dead: bool = False
    commits: int = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if self.dead:
            raise Crash("the device is off")
        if sql.lstrip().upper().startswith("COMMIT"):
            self.commits += 1
            if self.armed == "before":
                self.armed, self.dead = None, True
                raise Crash("power cut before COMMIT")
            if self.armed == "after":
                cursor = super().execute(sql, *args)
                self.armed, self.dead = None, True
                raise Crash("power cut after COMMIT")
                return cursor  # pragma: no cover
        return super().execute(sql, *args)


# ---------------------------------------------------------------------------------- documents


@dataclass
class Doc:
    version: int
    kind: str
    raw: bytes
    transient: bool = False  # its registry failures are transient only


CONFIG = """
[device]
id = "sim"
[state]
dir = "{state}"
[podman]
pull_retries = 0
[trust]
document_keys = ["{key}"]
[deployment]
stabilisation_window_s = {window}
apply_timeout_s = {timeout}
backoff_initial_s = 1
backoff_max_s = 8
backoff_reset_s = 60
image_gc = false
"""


@dataclass
class Stats:
    schedules: int = 0
    steps: int = 0
    crashes: int = 0
    crashes_at_writes: int = 0
    checks: int = 0
    features: dict[str, int] = field(default_factory=dict)

    def add(self, other: Stats) -> None:
        self.schedules += other.schedules
        self.steps += other.steps
        self.crashes += other.crashes
        self.crashes_at_writes += other.crashes_at_writes
        self.checks += other.checks
        for k, v in other.features.items():
            self.features[k] = self.features.get(k, 0) + v


class Fixture:
    """What every schedule shares: the signing key, the config, a migrated empty state.db."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = keys.generate_private_key()
        (workdir / "doc.pub").write_bytes(keys.public_key_pem(self.key.public_key()))
        self.config: AgentConfig = parse_config(CONFIG.format(state=workdir / "state", key=workdir / "doc.pub",
                                                              window=WINDOW_S, timeout=APPLY_TIMEOUT_S))
        self.template = workdir / "template.db"
        if not self.template.exists():
            conn = sqlite3.connect(self.template, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn, self.template)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()

    def sign(self, version: int, deployment: dict[str, Any]) -> bytes:
        return sign_document({"schema": 1, "version": version, "deployment": deployment}, self.key)


# ---------------------------------------------------------------------------------- one schedule


class Schedule:
    def __init__(self, seed: int, fixture: Fixture, steps: int = 40, planted: Callable[[], None] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.fx = fixture
        self.max_steps = steps
        self.stats = Stats(schedules=1)
        self.points = Points()
        self.clock = SimClock()
        self.runtime = SimRuntime(self.points, self.clock)
        self.runtime.on_start = self._check_start
        self.registry = SimRegistry(self.points)
        self.db_path = fixture.workdir / f"state-{seed}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(fixture.template, self.db_path)
        self.retained: bytes | None = None  # the broker's retained desired document
        self.docs: dict[int, Doc] = {}
        self.next_version = 1
        self.step_no = 0
        self.trace: list[str] = []
        # What the invariants remember across steps (and crashes).
        self.terminal: dict[int, State] = {}
        self.last_current: int | None = None
        self.last_rows: dict[int, State] = {}
        self.conn: CrashingConnection | None = None
        self.manager: DesiredStateManager | None = None
        self.pin_task: asyncio.Task[None] | None = None
        self.pass_task: asyncio.Task[PassResult] | None = None
        self.last_result: PassResult | None = None  # of the last pass that ended
        self.state_of_current: State | None = None  # at the start of the step

    # ------------------------------------------------------------------ the device

    async def boot(self) -> None:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                               factory=CrashingConnection)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a simulated power cut is logical: the OS keeps the file
        assert isinstance(conn, CrashingConnection)
        self.conn = conn
        self.store = StateStore(conn)  # the invariants read the durable state through it
        reconciler = Reconciler(self.fx.config, ReconcilerStore(conn), self.runtime, clock=self.clock)
        manager = DesiredStateManager(self.fx.config, conn, ReportedState(), self.registry, reconciler,
                                      clock=self.clock)
        manager.sleep = self._sleep
        self.manager = manager
        current = self.store.current()
        if current is not None and {s.version: s.state for s in self.store.versions()}.get(
                current.version) == State.PROBATION:
            self._feature("restart_during_probation")
        await manager.start()
        if self.retained is not None:  # the broker delivers the retained document on connect
            self._submit(self.retained)

    async def _sleep(self, delay: float) -> None:
        until = self.clock.now + delay
        await self.points.park("sleep")
        self.clock.now = max(self.clock.now, until)

    async def crash(self, why: str) -> None:
        self.stats.crashes += 1
        self.trace.append(f"crash ({why})")
        assert self.conn is not None
        self.conn.dead = True
        tasks = [t for t in (self.pin_task, self.pass_task) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Crash):
                await t
        for t in list(self.manager._tasks if self.manager else ()):
            t.cancel()
        self.conn.dead = False
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")  # what SQLite does with an uncommitted transaction at reopen
        self.conn.close()
        self.conn, self.manager, self.pin_task, self.pass_task = None, None, None, None
        self.last_result = None
        await self.boot()

    def _submit(self, raw: bytes) -> None:
        assert self.manager is not None
        decision = self.manager.submit(raw)
        if isinstance(decision, Admitted):
            self.pin_task = asyncio.get_running_loop().create_task(self.manager.pin_pending())
            self.manager._pin_task = self.pin_task  # a newer document cancels it, as in run()

    async def _settle(self, task: asyncio.Task[Any] | None) -> None:
        """Let a resumed actor run until it parks again or ends (it never waits on anything else)."""
        for _ in range(200):
            await asyncio.sleep(0)
            if task is None or task.done() or task in self.points.parked:
                return
        raise ActorRanAway(f"seed {self.seed}: an actor neither parked nor finished")

    async def _resume(self, task: asyncio.Task[Any] | None) -> None:
        if task is None or task.done():
            return
        parked = self.points.parked.get(task)
        if parked is None:
            await self._settle(task)
            return
        parked[1].set_result(None)
        await self._settle(task)

    async def _reap(self) -> None:
        """Collect finished actors; a Crash inside one is a power cut."""
        for name in ("pin_task", "pass_task"):
            task = getattr(self, name)
            if task is None or not task.done():
                continue
            setattr(self, name, None)
            if task.cancelled():
                continue
            exc = task.exception()
            if isinstance(exc, Crash):
                self.stats.crashes_at_writes += 1
                await self.crash(str(exc))
                return
            if exc is not None:
                raise exc
            if name == "pass_task":
                self._after_pass(task.result())

    def _after_pass(self, result: PassResult) -> None:
        self.last_result = result
        durable = self.store.current()
        if isinstance(result.verdict, Failed) and durable is not None and result.version != durable.version:
            self._feature("verdict_about_a_replaced_version")

    def _feature(self, name: str) -> None:
        self.stats.features[name] = self.stats.features.get(name, 0) + 1

    # ------------------------------------------------------------------ documents

    def new_document(self) -> Doc:
        version = self.next_version
        self.next_version += 1
        kind = self.rng.choice(KINDS)
        tag = f"v{version}"
        modules: dict[str, Any] = {"a": {"image": f"reg.sim/a:{tag}"}}
        transient = False
        if kind == "unsigned":
            modules["b"] = {"image": f"reg.sim/b:{tag}"}
            self.registry.refused.add(f"reg.sim/b:{tag}")
        elif kind == "crashing":
            modules["b"] = {"image": f"reg.sim/crash:{tag}"}
        elif kind == "refused_model":
            modules["a"]["artifacts"] = [{"ref": f"reg.sim/model:{tag}", "path": "/models"}]
            self.registry.refused.add(f"reg.sim/model:{tag}")
        elif kind == "transient":
            codes = [self.rng.choice(sorted({"registry_unreachable", "manifest_truncated"}))
                     for _ in range(self.rng.randint(1, 4))]
            self.registry.transient[f"reg.sim/a:{tag}"] = codes
            transient = True
        elif kind == "transient_artifact":
            modules["a"]["artifacts"] = [{"ref": f"reg.sim/model:{tag}", "path": "/models"}]
            self.registry.transient[f"reg.sim/model:{tag}"] = ["registry_unreachable"] * self.rng.randint(1, 3)
            transient = True
        doc = Doc(version, kind, self.fx.sign(version, {"modules": modules}), transient)
        self.docs[version] = doc
        return doc

    # ------------------------------------------------------------------ steps

    async def step(self) -> None:
        self.step_no += 1
        self.stats.steps += 1
        r = self.rng.random()
        current = self.store.current()
        rows = {s.version: s.state for s in self.store.versions()}
        self.state_of_current = rows.get(current.version) if current is not None else None
        self.trace.append(f"-- step {self.step_no} (current {current.version if current else None}: "
                          f"{self.state_of_current})")
        try:
            if r < 0.09:
                doc = self.new_document()
                self.trace.append(f"deliver v{doc.version} ({doc.kind})")
                self.retained = doc.raw
                self._submit(doc.raw)
                await self._settle(self.pin_task)
            elif r < 0.11 and self.retained is not None:
                self.trace.append("deliver the retained document again")
                self._submit(self.retained)
                await self._settle(self.pin_task)
            elif r < 0.13 and self.docs:
                old = self.docs[self.rng.choice(sorted(self.docs))]
                self.trace.append(f"replay v{old.version}")
                self._submit(old.raw)
                await self._settle(self.pin_task)
            elif r < 0.34:
                self.trace.append("resume pinning")
                await self._resume(self.pin_task)
            elif r < 0.66:
                if self.pass_task is None:
                    self.trace.append("start a pass")
                    assert self.manager is not None
                    self.pass_task = asyncio.get_running_loop().create_task(self.manager.reconcile())
                    await self._settle(self.pass_task)
                else:
                    self.trace.append("resume the pass")
                    await self._resume(self.pass_task)
            elif r < 0.72:
                self.trace.append("a calm while: everything runs until there is nothing to do")
                await self.calm(30)
            elif r < 0.82:
                delta = self.rng.choice((1.0, 5.0, 20.0, 40.0, 1.0, 5.0, 130.0))
                self.trace.append(f"time passes ({delta:g} s)")
                self.clock.now += delta
                self.runtime.time_passes()
            elif r < 0.86:
                running = self.runtime.running()
                if running:
                    victim = self.rng.choice(sorted(running, key=lambda c: c.id))
                    self.trace.append(f"container {victim.name} dies")
                    self.runtime.exit(victim.name, 137)
            elif r < 0.93:
                when = self.rng.choice(("before", "after"))
                self.trace.append(f"power cut armed: {when} the next COMMIT")
                assert self.conn is not None
                self.conn.armed = when
            else:
                parked = sorted({name for name, _ in self.points.parked.values()})
                if parked:
                    self._feature("crash_while_parked")
                await self.crash(f"at step {self.step_no} ({', '.join(parked) or 'idle'})")
        except Crash as exc:  # a durable write of the scheduler's own call (submit) lost power
            self.stats.crashes_at_writes += 1
            await self.crash(str(exc))
        await self._reap()
        self.check()

    async def calm(self, rounds: int, power_cuts: bool = True) -> bool:
        """Resume every actor and run passes, time passing, until nothing is left to do (power
        may be cut at any round)."""
        for _ in range(rounds):
            if power_cuts and self.rng.random() < 0.04:
                await self.crash("during a calm while")
                continue
            if self.pin_task is not None:
                await self._resume(self.pin_task)
            elif self.pass_task is not None:
                await self._resume(self.pass_task)
            else:
                assert self.manager is not None
                self.pass_task = asyncio.get_running_loop().create_task(self.manager.reconcile())
                await self._settle(self.pass_task)
            await self._reap()
            if self.pin_task is None and self.pass_task is None and self._quiet():
                return True
            if self.pin_task is None and self.pass_task is None:
                self.clock.now += 10.0
                self.runtime.time_passes()
            self.check()
        return False

    async def heal(self) -> None:
        """No more faults: run until nothing is left to do, so every version can end."""
        assert self.conn is not None
        self.conn.armed = None
        for _ in range(400):
            if self.pin_task is not None:
                await self._resume(self.pin_task)
            elif self.pass_task is not None:
                await self._resume(self.pass_task)
            else:
                assert self.manager is not None
                self.pass_task = asyncio.get_running_loop().create_task(self.manager.reconcile())
                await self._settle(self.pass_task)
            await self._reap()
            if self.pin_task is None and self.pass_task is None and self._quiet():
                break
            if self.pin_task is None and self.pass_task is None:
                self.clock.now += 10.0
                self.runtime.time_passes()
            self.check()
        else:
            raise Violation(self.describe("the device never settled (a version with nothing left to do)"))
        self.check(final=True)

    def _quiet(self) -> bool:
        assert self.conn is not None and self.manager is not None
        store = self.store
        current = store.current()
        if self.manager._pending:
            return False
        if current is None:
            return True
        rows = {s.version: s.state for s in store.versions()}
        last = self.last_result  # the last pass ran over the current version and found nothing to do
        return (rows.get(current.version) in TERMINAL and last is not None and not last.again
                and last.version == current.version and not self.manager.report_held)

    # ------------------------------------------------------------------ invariants

    def describe(self, what: str) -> str:
        tail = "\n  ".join(self.trace[-25:])
        return (f"seed {self.seed}, step {self.step_no}: {what}\n  last steps:\n  {tail}\n"
                f"  replay: EXPLORER_SEED={self.seed} python -m pytest tests/explorer -p no:cacheprovider -q "
                f"(or python -m tests.explorer --seed {self.seed})")

    def _check_start(self, c: ObservedContainer) -> None:
        """A superseded (or any non-current) version never runs: the agent starts a container only
        for the deployment that is `current` on disk when it sends the start."""
        if self.conn is None or self.conn.in_transaction:
            return
        current = self.store.current()
        self.stats.checks += 1
        wanted = {(m.name, m.spec_hash) for m in current.pinned().modules.values()} if current else set()
        if (c.labels.get(LABEL_MODULE), c.labels.get(LABEL_SPEC_HASH)) not in wanted:
            raise Violation(self.describe(
                f"superseded-never-runs: container {c.name} (deployment {c.labels.get(LABEL_DEPLOYMENT)}) started, "
                f"but it is not of the current deployment ({current.version if current else None})"))

    def check(self, *, final: bool = False) -> None:
        assert self.conn is not None and self.manager is not None
        store = self.store
        current, lkg = store.current(), store.last_known_good()
        rows = {s.version: s for s in store.versions()}
        cur = current.version if current else None
        lkg_v = lkg.version if lkg else None
        self.stats.checks += 6

        # 1. The device reports what is durable (also right after a restart); a rollback only once
        #    the pass that acts on it has run (the report is held until then, never for longer:
        #    see _check_final).
        section = self.manager.reported.get("deployment") or {}
        if not self.manager.report_held and (section.get("current"), section.get("lastKnownGood")) != (cur, lkg_v):
            raise Violation(self.describe(
                f"reports-durable-current: reported current/lkg {section.get('current')}/"
                f"{section.get('lastKnownGood')}, durable {cur}/{lkg_v}"))
        # 2. The version reported good is the one that runs (or ran last): the newest good one is
        #    last-known-good, and a current version in state good is last-known-good.
        good = [v for v, s in rows.items() if s.state == State.GOOD]
        if good and max(good) != lkg_v:
            raise Violation(self.describe(f"good-is-last-known-good: good versions {good}, lkg {lkg_v}"))
        if cur is not None and rows.get(cur) is not None and rows[cur].state == State.GOOD and cur != lkg_v:
            raise Violation(self.describe(f"good-is-last-known-good: current {cur} is good, lkg {lkg_v}"))
        # 3. `current` moves back only by a rollback that names the failed version.
        if self.last_current is not None and cur is not None and cur < self.last_current:
            failed = rows.get(self.last_current)
            if failed is None or failed.state != State.ROLLED_BACK or cur != lkg_v:
                raise Violation(self.describe(
                    f"current-moves-back-only-by-rollback: current went {self.last_current} -> {cur}; "
                    f"version {self.last_current} is {failed.state if failed else 'unknown'}, lkg {lkg_v}"))
        if cur is not None and self.last_current is not None and cur < self.last_current:
            self._feature("rolled_back")
        self.last_current = cur if cur is not None else self.last_current
        # 4. Every admitted version reaches exactly one terminal state: a terminal state never
        #    changes, and no stored version is activating or on probation unless it is current.
        for v, s in rows.items():
            if s.state in TERMINAL:
                first = self.terminal.setdefault(v, s.state)
                if first != s.state:
                    raise Violation(self.describe(f"one-terminal-state: version {v} was {first}, now {s.state}"))
            elif s.state in (State.ACTIVATING, State.PROBATION) and v != cur:
                raise Violation(self.describe(
                    f"no-stuck-version: version {v} is {s.state} but current is {cur}"))
        for v, first in self.terminal.items():
            if v in rows and rows[v].state != first:
                raise Violation(self.describe(f"one-terminal-state: version {v} was {first}, now {rows[v].state}"))
        # 5. A transient cause never makes a version terminal.
        for v, s in rows.items():
            doc = self.docs.get(v)
            if s.state == State.REJECTED and (s.code in TRANSIENT_CODES or (doc is not None and doc.transient)):
                raise Violation(self.describe(f"transient-never-final: version {v} rejected with {s.code}"))
            if (doc is not None and doc.transient and s.state not in (State.VERIFYING, State.REJECTED)
                    and any(ref.endswith(f":v{v}") for ref in self.registry.failed_transiently)):
                self._feature("transient_failure_then_committed")
        if final:
            self._check_final(store, current, rows)

    def _check_final(self, store: StateStore, current: Any, rows: dict[int, Any]) -> None:
        self.stats.checks += 4
        for s in rows.values():
            self._feature(f"ended_{s.state}")
        if self.manager is not None and self.manager.report_held:
            raise Violation(self.describe("reports-durable-current: a rollback's report is still held after healing"))
        for v, s in rows.items():
            if s.state not in TERMINAL:
                raise Violation(self.describe(f"every-version-ends: version {v} is still {s.state} after healing"))
        # After everything settled the device runs the durable current, and only it.
        if current is not None:
            wanted = {(m.name, m.spec_hash) for m in current.pinned().modules.values()}
            for c in self.runtime.containers.values():
                key = (c.labels.get(LABEL_MODULE), c.labels.get(LABEL_SPEC_HASH))
                if c.state == "running" and key not in wanted:
                    raise Violation(self.describe(
                        f"runs-durable-current: {c.name} (deployment {c.labels.get(LABEL_DEPLOYMENT)}) runs, "
                        f"current is {current.version}; states {({v: str(s.state) for v, s in rows.items()})}"))
            for name, spec_hash in wanted:
                if not any((c.labels.get(LABEL_MODULE), c.labels.get(LABEL_SPEC_HASH)) == (name, spec_hash)
                           for c in self.runtime.containers.values()):
                    raise Violation(self.describe(f"runs-durable-current: module {name} of {current.version} "
                                                  "has no container"))
        for v, doc in self.docs.items():
            if doc.kind == "transient" and v in rows and rows[v].state == State.REJECTED:
                raise Violation(self.describe(f"transient-never-final: version {v} rejected"))

    # ------------------------------------------------------------------ the whole schedule

    async def run(self) -> Stats:
        await self.boot()
        try:
            for _ in range(self.max_steps):
                await self.step()
            await self.heal()
        finally:
            for t in (self.pin_task, self.pass_task):
                if t is not None and not t.done():
                    t.cancel()
            if self.conn is not None:
                self.conn.dead = False
                self.conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        return self.stats


def run_schedule(seed: int, fixture: Fixture, steps: int = 40) -> Stats:
    return asyncio.run(Schedule(seed, fixture, steps).run())
