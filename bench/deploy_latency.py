"""Deployment latency and agent memory, against real podman and a real registry.

    python bench/deploy_latency.py [--runs 20]

1. Handover -> running: a deployment is handed to the desired-state owner (as the twin does)
   and we time until the module is reported running, from the handover and from the moment the
   owner's commit of the accepted document returned (accepted -> running). Each run deploys a
   fresh module (a new spec), with the previous one removed beforehand, so each run is: resolve
   the tag in the registry, commit, plan, create by digest, start, observe. Baseline, measured
   in the same run and interleaved: `podman run -d` of the same image by digest (the CLI
   returning = started), and the floor: the raw libpod API create + start of the same image and
   command by digest (podman-py against the same podman service, no agent code; its create also
   inspects the new container; start returning = running). Floor 2: the agent's own container
   spec for that module (its least-privilege settings, mounts and labels) posted as is to the
   libpod API, create then start, nothing between them.
2. RSS of the real `edge-agent run` daemon while it manages 10 running modules.

Where the agent's time goes: every podman call of the agent (and the image verification) is
stamped, and the table "agent's path" gives, per call, how many per run and their median time,
from the handover to the report.

Prints a table; nothing is asserted (house rules: speed and memory only in bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devinfra.agent import AgentProcess  # noqa: E402
from devinfra.pipeline import Pipeline  # noqa: E402
from devinfra.podman import PodmanService, ensure_busybox_image, podman, use_dev_containers_conf  # noqa: E402
from devinfra.procs import free_port, wait_until  # noqa: E402
from devinfra.registry import Registry  # noqa: E402
from edge_agent.config import parse_config  # noqa: E402
from edge_agent.desired.admission import Admitted, DocumentTrust  # noqa: E402
from edge_agent.desired.store import Transition  # noqa: E402
from edge_agent.reported import ReportedState  # noqa: E402
from edge_agent.runtime.api import LABEL_DEVICE, ContainerRequest  # noqa: E402
from edge_agent.runtime.podman import PodmanRuntime, build_spec  # noqa: E402
from edge_agent.store import open_state_db  # noqa: E402
from edge_agent.trust.factory import build_verifier  # noqa: E402
from edge_agent.trust.passthrough import PassthroughVerifier  # noqa: E402
from edge_shared.protocol import desired_document  # noqa: E402

CMD = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def config_text(device: str, url: str, registry: Registry, state: Path | None = None) -> str:
    return (f'[device]\nid = "{device}"\n[logging]\nlevel = "warning"\n'
            + (f'[state]\ndir = "{state}"\n' if state is not None else "") +
            f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            f'[podman]\nsocket = "{url}"\nstop_grace_s = 1\n'
            f'[attestation]\nenabled = false\n[telemetry]\nenabled = false\n'
            f'[trust]\ninsecure_registries = ["{registry.host}"]\n[[trust.policy]]\nscope = "*"\nmode = "off"\n'
            f'[deployment]\ncontainer_prefix = "{device}-"\nstabilisation_window_s = 1\npoll_interval_s = 30\n'
            "local_deploy = true\n")


CallPath = list[tuple[str, float, float]]  # one run's calls: (name, start, end) relative to the handover


@dataclass(frozen=True)
class Runs:
    """Seconds per run: the agent from the handover and from the commit of its acceptance to
    reported running; `podman run -d`; the two libpod API floors; the agent's calls per run."""

    agent_s: list[float]
    accepted_s: list[float]
    raw_s: list[float]
    api_s: list[float]
    spec_s: list[float]
    paths: list[CallPath]


class Stamps:
    """(name, start, end) of every runtime call and verification, for the agent's path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def wrap(self, obj: Any, name: str, label: str | None = None) -> None:
        inner = getattr(obj, name)

        async def stamped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.calls.append((label or name, t0, time.perf_counter()))

        setattr(obj, name, stamped)


def libpod_create_start(client: Any, digest_ref: str, name: str) -> float:
    """The floor: libpod API create + start through podman-py, seconds until start returned."""
    t0 = time.perf_counter()
    container = client.containers.create(digest_ref, command=CMD, name=name)
    container.start()
    return time.perf_counter() - t0


def libpod_spec_create_start(client: Any, spec: dict[str, Any], name: str) -> float:
    """The floor with the agent's own container spec (least privilege: read-only root, tmpfs /tmp,
    no capabilities, pids limit, log rotation, its mounts and labels), posted as is to the libpod
    API: create + start, seconds until start returned (no inspect between them)."""
    body = json.dumps({**spec, "name": name, "labels": {**spec.get("labels", {}), LABEL_DEVICE: "bench-floor"}})
    t0 = time.perf_counter()
    resp = client.api.post("/containers/create", data=body, headers={"content-type": "application/json"})
    resp.raise_for_status()
    client.api.post(f"/containers/{resp.json()['Id']}/start").raise_for_status()
    return time.perf_counter() - t0


async def agent_latency(device: str, url: str, registry: Registry, image: str, digest_ref: str,
                        runs: int, state: Path, stamps: Stamps
                        ) -> Runs:
    from podman import PodmanClient

    api = PodmanClient(base_url=url)
    db = open_state_db(state)
    reported = ReportedState()
    config = parse_config(config_text(device, url, registry, state))
    runtime = PodmanRuntime(url)
    verifier = build_verifier(config, db)
    for name in ("list_containers", "image_exists", "create", "start", "inspect", "pull"):
        stamps.wrap(runtime, name)
    stamps.wrap(verifier, "verify", "verify (registry)")
    specs: list[dict[str, Any]] = []  # the spec of every container the agent creates
    create = runtime.create

    async def create_kept(request: ContainerRequest) -> str:
        specs.append(build_spec(request))
        return await create(request)

    runtime.create = create_kept  # type: ignore[method-assign]
    pipe = Pipeline(config, db, reported, runtime, verifier)
    await pipe.start()
    tasks = [asyncio.create_task(pipe.manager.run())]
    accepted_at: list[float] = []  # when each accepted document's commit returned
    apply = pipe.manager.store.apply

    def apply_stamped(transition: Transition) -> None:
        apply(transition)
        if transition.accepted is not None:
            accepted_at.append(time.perf_counter())

    pipe.manager.store.apply = apply_stamped  # type: ignore[method-assign]

    def handover(version: int, deployment: dict[str, Any]) -> None:
        """As the twin hands a document over: the owner's run() pins and commits it."""
        decision = pipe.manager.submit(desired_document(version, deployment), trust=DocumentTrust(mode="off"))
        assert isinstance(decision, Admitted), decision

    agent_s: list[float] = []
    accepted_s: list[float] = []
    raw_s: list[float] = []
    api_s: list[float] = []
    spec_s: list[float] = []
    paths: list[list[tuple[str, float, float]]] = []  # per run: the calls, relative to the handover
    version = 0
    try:
        for i in range(runs):
            # Empty deployment first (not timed), so each timed run creates and starts one container.
            version += 1
            handover(version, {"modules": {}})
            while reported.get("modules") or podman("ps", "-aq", "--filter", f"label=edge-agent.device={device}"
                                                    ).stdout.strip():
                await asyncio.sleep(0.01)
            version += 1
            doc = {"modules": {f"m{i}": {"image": image, "command": CMD[:2], "args": CMD[2:]}}}
            stamps.calls.clear()
            t0 = time.perf_counter()
            handover(version, doc)
            seen = reported.version
            while (reported.get("modules") or {}).get(f"m{i}", {}).get("runtimeStatus") != "running":
                seen = await reported.changed(seen)  # woken by the report itself, not by polling
            running = time.perf_counter()
            agent_s.append(running - t0)
            accepted_s.append(running - accepted_at[-1])
            paths.append([(n, a - t0, b - t0) for n, a, b in stamps.calls if a >= t0])
            # Baseline in the same run: podman run -d of the same image by digest.
            name = f"{device}-raw{i}"
            t0 = time.perf_counter()
            podman("run", "-d", "--name", name, digest_ref, *CMD)
            raw_s.append(time.perf_counter() - t0)
            podman("rm", "-f", "-t", "0", name)
            name = f"{device}-api{i}"
            api_s.append(libpod_create_start(api, digest_ref, name))
            podman("rm", "-f", "-t", "0", name)
            name = f"{device}-spec{i}"
            spec_s.append(libpod_spec_create_start(api, specs[-1], name))
            podman("rm", "-f", "-t", "0", name)
    finally:
        api.close()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=15)
        db.close()
    return Runs(agent_s, accepted_s, raw_s, api_s, spec_s, paths)


def agent_rss(device: str, url: str, registry: Registry, image: str, workdir: Path) -> tuple[int, int]:
    agent = AgentProcess(workdir, config_text(device, url, registry), env={"PYTHONPATH": str(REPO)}).start()
    try:
        assert agent.proc is not None and agent.proc.proc is not None
        pid = agent.proc.proc.pid
        idle = _rss_kb(pid)
        modules = {f"m{i}": {"image": image, "command": CMD[:2], "args": CMD[2:]} for i in range(10)}
        agent.call("deploy", {"version": 1, "deployment": {"modules": modules}})

        def all_running() -> bool:
            status: Any = agent.call("status")
            mods = status["reported"].get("modules") or {}
            return len(mods) == 10 and all(m["runtimeStatus"] == "running" for m in mods.values())

        wait_until(all_running, 120, "10 modules running", interval=0.5)
        time.sleep(5)  # a few reconcile passes, healthcheck ticks and events
        return idle, _rss_kb(pid)
    finally:
        agent.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-rss", action="store_true", help="skip part 2 (the daemon's RSS)")
    args = parser.parse_args()
    device = f"lc-test-bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="lc-bench-") as tmp:
        work = Path(tmp)
        use_dev_containers_conf(work)
        (work / "podman").mkdir()
        service = PodmanService(work / "podman").start()
        registry = Registry(work / "registry").start()
        local = f"localhost/{device}:1"
        try:
            base = ensure_busybox_image()
            (work / "ctx").mkdir()
            (work / "ctx" / "Containerfile").write_text(f"FROM {base}\nLABEL lc-test-run={device}\n")
            podman("build", "-q", "--pull=never", "-t", local, str(work / "ctx"))
            image = f"{registry.host}/lc-test/{device}:1"
            podman("push", "-q", "--tls-verify=false", local, image)
            digest = asyncio.run(PassthroughVerifier([registry.host]).verify(image)).digest
            digest_ref = f"{image.rsplit(':', 1)[0]}@{digest}"
            podman("pull", "-q", "--tls-verify=false", digest_ref)
            measured = asyncio.run(agent_latency(
                device, service.url, registry, image, digest_ref, args.runs, work / "state", Stamps()))
            idle_kb = ten_kb = 0
            if not args.no_rss:
                idle_kb, ten_kb = agent_rss(device + "r", service.url, registry, image, work / "agent")
        finally:
            for dev in (device, device + "r"):
                ids = podman("ps", "-aq", "--filter", f"label=edge-agent.device={dev}", check=False).stdout.split()
                if ids:
                    podman("rm", "-f", "-t", "0", *ids, check=False)
            ids = podman("images", "-q", "--filter", f"label=lc-test-run={device}", check=False).stdout.split()
            if ids:
                podman("rmi", "-f", *sorted(set(ids)), check=False)
            registry.stop()
            service.stop()

    print(f"\nhandover -> running, {args.runs} runs (seconds)")
    print(f"{'':40}{'p50':>8}{'p99':>8}{'max':>8}{'mean':>8}")
    m = measured
    agent_s, accepted_s, raw_s, api_s, spec_s, paths = m.agent_s, m.accepted_s, m.raw_s, m.api_s, m.spec_s, m.paths
    rows = (("edge-agent handover -> running", agent_s), ("edge-agent accepted -> running", accepted_s),
            ("podman run -d", raw_s), ("libpod API create+start (floor)", api_s),
            ("the same, the agent's spec (floor 2)", spec_s))
    for label, values in rows:
        print(f"{label:40}{pct(values, .5):8.3f}{pct(values, .99):8.3f}{max(values):8.3f}"
              f"{statistics.mean(values):8.3f}")
    ratios = (("handover -> running / libpod API (floor)", agent_s, api_s),
              ("accepted -> running / libpod API (floor)", accepted_s, api_s),
              ("accepted -> running / floor 2", accepted_s, spec_s),
              ("handover -> running / podman run -d", agent_s, raw_s))
    for label, timed, reference in ratios:
        ratio50, ratio99 = pct(timed, 0.5) / pct(reference, 0.5), pct(timed, 0.99) / pct(reference, 0.99)
        print(f"{label:40}{ratio50:8.2f}{ratio99:8.2f}")
    print("\nthe agent's path, handover -> reported running (per run: calls, median ms each, median ms in all;"
          " gaps: agent time between calls)")
    names = sorted({n for path in paths for n, _, _ in path}, key=lambda n: min(
        (a for path in paths for m, a, _ in path if m == n), default=0))
    for name in names:
        counts = [sum(1 for m, _, _ in path if m == name) for path in paths]
        each = [(b - a) * 1000 for path in paths for m, a, b in path if m == name]
        totals = [sum((b - a) * 1000 for m, a, b in path if m == name) for path in paths]
        print(f"  {name:<22}{statistics.median(counts):>5.0f} x {statistics.median(each):8.1f}"
              f"{statistics.median(totals):10.1f}")
    median_run = sorted(range(len(agent_s)), key=agent_s.__getitem__)[len(agent_s) // 2]
    print(f"the median run ({agent_s[median_run] * 1000:.1f} ms), call by call (ms from the handover; the "
          "event and health watchers' calls run beside the pass):")
    for name, start, end in sorted(paths[median_run], key=lambda c: c[1]):
        print(f"  {start * 1000:8.1f} -> {end * 1000:8.1f}  {name}")
    if args.no_rss:
        return 0
    print("\nedge-agent daemon RSS")
    print(f"  idle, no modules        {idle_kb / 1024:7.1f} MiB")
    print(f"  managing 10 modules     {ten_kb / 1024:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
