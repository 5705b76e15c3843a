"""Model switch: a signed deployment that changes only the pilot's model artifact, from its publish to
the first tick the running pilot container drives with the new model, step by step; real mosquitto
(mutual TLS), OCI registry, podman, agent and the real pilot image, as in the quickstart.

    python bench/model_switch.py [--runs 3] [--before REV]

Each step's time is taken where it happens (wall clock, one machine): the desired document at a raw
subscriber (the publish), the agent's own log events (desired.admitted, deployment.accepted,
artifact.fetching/fetched/switched, artifact.module_report), the pilot's log lines as podman
stamped them (model_checking, model_checked, model_swapped) and the pilot's own stats record
(drove_model_since: the first tick that actuated with the new model, named by its digest).
`--before REV` runs that commit's agent and pilot image the same way in the same run (its pilot
has no drove_model_since: its first tick is taken at its swap, which is that tick's start).

Floors, measured in the same run: a raw MQTT QoS 1 round trip on the same broker, and a raw HTTP
GET of the model's blob from the same registry (the artifact's download at the link's rate). The
goal: publish -> first tick within 1 s plus that download time, without a container restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devinfra.agent import AgentProcess  # noqa: E402
from devinfra.pki import Pki, tls_broker, unique  # noqa: E402
from devinfra.podman import PodmanService, podman, use_dev_containers_conf  # noqa: E402
from devinfra.registry import Registry  # noqa: E402
from edge_shared.mqtt_client import no_delay  # noqa: E402
from tests.integration.artifacts.test_model_delivery import deployment, model_variant, push_model  # noqa: E402
from tests.integration.desired.conftest import Device  # noqa: E402

STABILISATION_S = 5  # the quickstart's [deployment] stabilisation_window_s
INT8 = REPO / "modules" / "pilot" / "models" / "model.int8.onnx"  # the quickstart's new model (0.84 MB)
AGENT_EVENTS = {"desired.admitted": "admitted", "deployment.accepted": "accepted", "artifact.fetching": "dl_start",
                "artifact.fetched": "dl_end", "artifact.switched": "placed", "artifact.module_report": "confirmed",
                "deployment.good": "good"}
PILOT_EVENTS = {"model_checking": "noticed", "model_checked": "checked", "model_swapped": "swapped"}
STEPS = [  # (key, what)
    ("published", "publish: desired document at a raw subscriber"),
    ("admitted", "agent: document admitted (signature, gate)"),
    ("dl_start", "agent: artifact download start"),
    ("dl_end", "agent: artifact download end (fsync'd)"),
    ("accepted", "agent: accepted (artifact pinned, verified, committed)"),
    ("placed", "agent: placed (current renamed to the new version)"),
    ("noticed", "pilot: notices the new model"),
    ("checked", "pilot: off-loop check + self-test + load done"),
    ("swapped", "pilot: swapped in (start of a tick)"),
    ("first_tick", "pilot: first tick driven by it (its stats)"),
    ("confirmed", "agent: has the pilot's report (confirmation)"),
    ("good", f"agent: deployment good (stabilisation_window_s = {STABILISATION_S})"),
    ("command_end", "edgectl deploy --wait --until good returned"),
]


def checkout(rev: str, into: Path) -> Path:
    """edge_agent, shared, modules and scripts of `rev` (the agent's code and the pilot's image)."""
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev, "edge_agent", "shared", "modules",
                    "scripts"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def build_pilot(tree: Path, name: str) -> str:
    image = f"localhost/edge-bench-switch-{name}:amd64"
    subprocess.run(["bash", str(tree / "modules" / "pilot" / "build-image.sh"), image, "--arch", "amd64"], check=True,
                   timeout=1800, stdout=subprocess.DEVNULL)
    return image


# ---------------------------------------------------------------- floors

def mqtt_round_trips(dev: Device, n: int) -> list[float]:
    """Raw QoS 1 publish -> the same client's subscription receives it (ms), fleet identity, same broker."""
    async def go() -> list[float]:
        out = []
        topic = f"{dev.prefix}/bench/{unique('rt')}"
        ctx = ssl.create_default_context(cafile=str(dev.pki.ca))
        ctx.load_cert_chain(str(dev.fleet.cert), str(dev.fleet.key))
        import aiomqtt
        async with aiomqtt.Client("127.0.0.1", dev.broker.port, identifier=f"{dev.fleet.cn}-{unique()}",
                                  tls_context=ctx) as c:
            # Nagle off, as every edge-agent client has it: otherwise each publish waits for the
            # peer's delayed ACK (about 40 ms) and the floor is that timer, not the broker.
            no_delay(c._client.socket())
            await c.subscribe(topic, qos=1)
            for i in range(n):
                t0 = time.perf_counter()
                await c.publish(topic, str(i).encode(), qos=1)
                async for _msg in c.messages:
                    break
                out.append((time.perf_counter() - t0) * 1000)
        return out
    return asyncio.run(go())


def blob_gets(registry: Registry, repo: str, digest: str, n: int) -> tuple[list[float], int]:
    url = f"http://{registry.host}/v2/{repo}/blobs/{digest}"
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url) as r:
            size = len(r.read())
        times.append((time.perf_counter() - t0) * 1000)
    return times, size


# ---------------------------------------------------------------- one variant (before / now)

class DesiredStamps(threading.Thread):
    """A raw subscriber on the device's desired topic: when each version arrived (wall clock)."""

    def __init__(self, dev: Device) -> None:
        super().__init__(daemon=True)
        self.dev, self.arrived, self.ready = dev, {}, threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._go())

    async def _go(self) -> None:
        import aiomqtt
        ctx = ssl.create_default_context(cafile=str(self.dev.pki.ca))
        ctx.load_cert_chain(str(self.dev.fleet.cert), str(self.dev.fleet.key))
        async with aiomqtt.Client("127.0.0.1", self.dev.broker.port, identifier=f"{self.dev.fleet.cn}-{unique()}",
                                  tls_context=ctx) as c:
            await c.subscribe(f"{self.dev.prefix}/{self.dev.id}/desired", qos=1)
            self.ready.set()
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(anext(c.messages), 0.5)
                except TimeoutError:
                    continue
                t = time.time()
                with contextlib.suppress(Exception):
                    env = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    import base64
                    body = json.loads(base64.b64decode(env["payload"])) if "payload" in env else env
                    self.arrived.setdefault(int(body["version"]), t)

    def stop(self) -> None:
        self._stop.set()


def agent_events(dev: Device) -> list[dict[str, Any]]:
    out = []
    for line in (dev.agent.workdir / "agent.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def pilot_events(cid: str) -> list[tuple[float, str, str]]:
    """(podman's time stamp, event, line) of the pilot's log lines with an event."""
    out = []
    text = podman("logs", "-t", cid, check=False)
    for line in (text.stdout + text.stderr).splitlines():
        if " event=" not in line:
            continue
        stamp, _, rest = line.partition(" ")
        event = rest.split(" event=")[1].split()[0]
        out.append((stamp_time(stamp), event, rest))
    return out


def stamp_time(stamp: str) -> float:
    """podman's RFC 3339 time with nanoseconds (2026-12-07T05:30:00.123456789+00:00 or ...Z)."""
    head, _, tail = stamp.partition(".")
    digits = "".join(c for c in tail[:9] if c.isdigit())
    zone = tail[len(digits):].replace("Z", "+00:00") or "+00:00"
    return datetime.fromisoformat(f"{head}{zone}").timestamp() + float(f"0.{digits or '0'}")


def stats_records(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if rec.get("stream") == "pilot.stats" and isinstance(rec.get("payload"), dict):
                        out.append(rec)
    return out


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class Variant:
    """One agent (its tree's code) and its pilot image on their own broker, switched model after model."""

    def __init__(self, label: str, tree: Path, image: str, work: Path, pki: Pki, registry: Registry,
                 podman_url: str, runs: int) -> None:
        self.label, self.image = label, image
        prefix = unique("ms")
        fleet = pki.client(unique("fleet"))
        self.broker = tls_broker(work / "mosquitto", pki, prefix, fleet.cn).start()
        self.dev = dev = Device(work / "device", pki, self.broker, prefix, fleet, registry, podman_url, "")
        self.runtime = Path(tempfile.mkdtemp(prefix="ea-ms-", dir="/tmp"))
        # the quickstart's device: telemetry on, a stabilisation window of 5 s
        config = (dev.config_text.replace('format = "text"', 'format = "json"')
                  .replace("[telemetry]\nenabled = false\n", f'[telemetry]\nruntime_dir = "{self.runtime}"\n')
                  .replace("stabilisation_window_s = 2", f"stabilisation_window_s = {STABILISATION_S}"))
        dev.agent = AgentProcess(work / "device" / "agent", config,
                                 env={"PYTHONPATH": f"{tree}{os.pathsep}{tree / 'shared'}"})
        self.telemetry_log = work / "telemetry.log"
        self.stamps = DesiredStamps(dev)
        self.tele: subprocess.Popen[bytes] | None = None
        self.results: list[dict[str, float]] = []
        self.extra: dict[str, Any] = {}
        self.runs = runs

    def setup(self) -> None:
        dev = self.dev
        self.image_ref = f"{dev.registry.host}/dp/{dev.run}-pilot:1"
        podman("push", "-q", "--tls-verify=false", self.image, self.image_ref)
        out = dev.edgectl("sign-image", self.image_ref, "--key", str(dev.keys / "image.key"),
                          "--insecure-registry", dev.registry.host)
        assert out.returncode == 0, out.stderr
        work = dev.workdir
        self.models = [push_model(dev, model_variant(work / f"m{i}", f"bench {self.label} {i}", source=INT8), f"m{i}")
                       for i in range(self.runs + 1)]
        self.extra["blob"] = (f"dp/{dev.run}-models/pilot", self.models[1]["layer"])
        dev.agent.start()
        self.tele = subprocess.Popen([sys.executable, "-m", "edgectl.cli", "telemetry", dev.id, "--host", "127.0.0.1",
                                      "--port", str(self.broker.port), *dev.fleet_identity(),
                                      "--client-id", unique("tele"), "--json", "--stream", "pilot.stats"],
                                     stdout=self.telemetry_log.open("wb"), stderr=subprocess.DEVNULL, cwd=REPO)
        self.stamps.start()
        self.stamps.ready.wait(20)
        out = dev.deploy(deployment(dev, self.image_ref, self.models[0]["ref"], 1), "--wait", "240", "--until", "good")
        assert out.returncode == 0, out.stdout + out.stderr + dev.agent.log()[-3000:]
        self.cid = dev.containers()["pilot"][0]
        first = self.models[0]["layer"].removeprefix("sha256:")[:16]
        wait(lambda: any(r["payload"].get("model") == first for r in stats_records(self.telemetry_log)), 120,
             "the pilot driving with the first model")

    def switch(self, i: int) -> None:
        """Deploy model i the quickstart's way (edgectl deploy --wait --until good) and take each step's time."""
        dev, version = self.dev, i + 1
        sha16 = self.models[i]["layer"].removeprefix("sha256:")[:16]
        command_start = time.time()
        out = dev.deploy(deployment(dev, self.image_ref, self.models[i]["ref"], version), "--wait", "240",
                         "--until", "good")
        command_end = time.time()
        assert out.returncode == 0, out.stdout + out.stderr + dev.agent.log()[-3000:]
        wait(lambda: any(r["payload"].get("model") == sha16 for r in stats_records(self.telemetry_log)), 120,
             f"the pilot on model {i}")
        step: dict[str, float] = {"published": self.stamps.arrived[version], "command_start": command_start,
                                  "command_end": command_end}
        digest = self.models[i]["digest"]
        for e in agent_events(dev):
            key = AGENT_EVENTS.get(str(e.get("EVENT")))
            if key is None or e["ts"] < step["published"] - 1:
                continue
            if key in ("admitted", "accepted", "good") and e.get("DEPLOYMENT") != str(version):
                continue
            if key in ("dl_start", "dl_end", "placed") and e.get("DIGEST") != digest:
                continue
            if key == "confirmed" and f"using sha256:{sha16[:12]}" not in str(e.get("msg")):
                continue
            step.setdefault(key, float(e["ts"]))
        for ts, event, line in pilot_events(self.cid):
            key = PILOT_EVENTS.get(event)
            if key is None or ts < step["published"]:
                continue
            if key == "noticed" or sha16[:12] in line:
                step.setdefault(key, ts)
        first = next((r["payload"].get("drove_model_since") for r in stats_records(self.telemetry_log)
                      if r["payload"].get("drove_model") == sha16), None)
        if first is not None:
            step["first_tick"] = float(first)
        elif "swapped" in step:
            step["first_tick"] = step["swapped"]
            self.extra["first_tick_from_swap"] = True
        self.results.append(step)
        self.extra["container_unchanged"] = dev.containers()["pilot"][0] == self.cid
        took = 1000 * (step["first_tick"] - step["published"])
        print(f"  {self.label} run {i}: publish -> first tick {took:.0f} ms; "
              f"edgectl deploy --until good {command_end - command_start:.2f} s", flush=True)

    def close(self) -> None:
        self.stamps.stop()
        if self.tele is not None:
            self.tele.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.tele.wait(10)
        if self.dev.agent.proc is not None and self.dev.agent.proc.alive():
            self.dev.agent.stop()
        self.dev.cleanup()
        self.broker.stop()
        shutil.rmtree(self.runtime, ignore_errors=True)


def median_ms(results: list[dict[str, float]], key: str) -> float | None:
    vals = [1000 * (r[key] - r["published"]) for r in results if key in r]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="model switches per variant (median shown)")
    ap.add_argument("--before", metavar="REV", help="also run this commit's agent and pilot image")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-model-switch-"))
    os.chdir(work)  # `python -m edge_agent.cli` puts its working directory first: the agent's code is its tree's
    use_dev_containers_conf(work)
    for sub in ("registry", "podman"):
        (work / sub).mkdir()
    registry = Registry(work / "registry").start()
    service = PodmanService(work / "podman").start()
    pki = Pki(work / "pki")
    variants: list[tuple[str, Path]] = []
    try:
        if args.before:
            (work / "before").mkdir()
            variants.append((f"before ({args.before})", checkout(args.before, work / "before")))
        variants.append(("now", REPO))
        running: list[Variant] = []
        try:
            for label, tree in variants:
                print(f"building the pilot image of {label} ...", flush=True)
                image = build_pilot(tree, "before" if label != "now" else "now")
                running.append(Variant(label, tree, image, work / label.split()[0], pki, registry, service.url,
                                       args.runs))
                running[-1].setup()
            for i in range(1, args.runs + 1):  # interleaved: the shared machine's load falls on both alike
                for v in running:
                    v.switch(i)
        finally:
            for v in running:
                v.close()
        table = {v.label: v.results for v in running}
        extras = {v.label: v.extra for v in running}
        # floors, same broker kind and registry (a fresh broker for the round trip)
        prefix = unique("ms")
        fleet = pki.client(unique("fleet"))
        broker = tls_broker(work / "mosquitto-floor", pki, prefix, fleet.cn).start()
        try:
            dev = Device(work / "floor-device", pki, broker, prefix, fleet, registry, service.url, "")
            rtt = mqtt_round_trips(dev, 30)
        finally:
            broker.stop()
        repo, layer = extras["now"]["blob"]
        gets, size = blob_gets(registry, repo, layer, 10)
    finally:
        service.stop()
        registry.stop()
    rtt_p50, get_p50 = statistics.median(rtt), statistics.median(gets)
    goal = 1000 + get_p50
    labels = list(table)
    print(f"\nmodel switch: deployment changing only the pilot's model artifact ({size / 1e6:.2f} MB int8 ONNX), "
          f"real agent + pilot container, mosquitto mutual TLS, registry and podman on 127.0.0.1; median of "
          f"{args.runs} switches; ms after the publish")
    print(f"{'step':72}" + "".join(f"{lab:>22}" for lab in labels))
    for key, what in STEPS:
        cells = []
        for lab in labels:
            v = median_ms(table[lab], key)
            cells.append(f"{v:22.0f}" if v is not None else f"{'-':>22}")
        print(f"{what:72}" + "".join(cells))
    cmd = "".join(f"{statistics.median(r['command_end'] - r['command_start'] for r in table[lab]) * 1000:22.0f}"
                  for lab in labels)
    print(f"{'the quickstart figure: edgectl deploy --until good, start->exit':72}{cmd}")
    print(f"{'floor: raw MQTT QoS 1 round trip (p50)':72}{rtt_p50:22.1f}")
    print(f"{'floor: raw HTTP GET of the model blob (p50)':72}{get_p50:22.1f}")
    print(f"{'goal: 1 s + the blob download':72}{goal:22.0f}")
    for lab in labels:
        v = median_ms(table[lab], "first_tick")
        if v is not None:
            print(f"{'publish -> first tick / goal (' + lab + ')':72}{v / goal:22.2f}")
            print(f"{'publish -> first tick / (raw round trip + blob GET) (' + lab + ')':72}"
                  f"{v / (rtt_p50 + get_p50):22.1f}")
        print(f"{'container unchanged (' + lab + ')':72}{extras[lab].get('container_unchanged')!s:>22}")
        if extras[lab].get("first_tick_from_swap"):
            print(f"  ({lab}: its pilot's stats do not name the first tick; taken at its swap)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
