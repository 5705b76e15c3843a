"""The quickstart story: the whole edge story on one machine, driving the real CLIs (edgectl,
edge-agent, edge-pilot, podman, mosquitto_pub/sub) as subprocesses, the way a user would.

Everything it starts lives in one work folder (./.quickstart/run) and is stopped on exit, on
Ctrl-C and on errors; pictures and figures go to ./.quickstart/out (or --out).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quickstart import infra, pictures
from quickstart.procs import QS_LABEL, Processes, clean_stale, remove_containers, tail

REPO = infra.REPO
DEVICE = "quickstart-rover"
WORK_MARKER = ".quickstart-work"  # in every work folder the story made: only such a folder is emptied
FLEET_USER = "fleet-ops"  # the operator certificate's CN (config/mosquitto/edge-agent.acl)
PREFIX = "edge"
STEPS = 9
PILOT_IMAGE_LOCAL = "localhost/qs-pilot:quickstart"
PILOT_REPO = "qs/pilot"
MODEL_REPO = "qs/models/pilot"
MODELS = REPO / "modules" / "pilot" / "models"


class StoryError(Exception):
    """A step failed: the message says which command and why."""


@dataclass
class Options:
    work: Path  # everything the story starts and keeps (default .quickstart/run); emptied at each start
    out: Path
    drive_s: float = 20.0  # driving before the outage
    outage_s: float = 20.0
    interactive: bool = True


@dataclass
class Run:
    """What the story learned along the way (figures.json is made from it)."""

    t0: float = field(default_factory=time.monotonic)
    pilot_t0: float | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    queue_samples: list[tuple[float, int]] = field(default_factory=list)
    outage: tuple[float, float] | None = None
    outage_figures: dict[str, Any] = field(default_factory=dict)
    refusals: dict[str, Any] = field(default_factory=dict)
    attestation: dict[str, Any] = field(default_factory=dict)
    pilot_mode: str = ""
    image: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # pushed model artifacts, by tag
    model_update: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)  # the device's enrolled certificate


class Story:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.work = opts.work
        self.enrollment_conf = self.work / "fleet" / "enrollment.toml"
        self.run_state = Run()
        self.procs: Processes | None = None
        self.broker: infra.Broker | None = None
        self.registry_port = 0
        self.tcti: str | None = None
        self.podman_url = ""
        self.env: dict[str, str] = {}
        self._sampler_stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.first_envelope = b""  # the signed deployment v1 as published (step 7 replays it)
        # The agent's ingest sockets: a short folder of this checkout's own, since a Unix socket
        # path (<runtime_dir>/ingest/<module>/telemetry.sock) may have at most 107 bytes and a
        # checkout can sit deep in the file system.
        digest = hashlib.sha256(str(self.work).encode()).hexdigest()[:12]
        self.runtime_dir = Path(tempfile.gettempdir()) / f"edge-qs-{digest}"

    # ------------------------------------------------------------------ output

    def say(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(f"      {line}", flush=True)

    @contextlib.contextmanager
    def step(self, n: int, title: str) -> Iterator[None]:
        bold, plain = ("\033[1m", "\033[0m") if self.opts.interactive and sys.stdout.isatty() else ("", "")
        print(f"\n{bold}[{n}/{STEPS}] {title} ...{plain}", flush=True)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.run_state.steps.append({"step": n, "title": title, "ok": False,
                                         "seconds": round(time.monotonic() - started, 1)})
            raise
        took = time.monotonic() - started
        self.run_state.steps.append({"step": n, "title": title, "ok": True, "seconds": round(took, 1)})
        print(f"[{n}/{STEPS}] done ({took:.0f} s)", flush=True)

    # ------------------------------------------------------------------ commands

    def cmd(self, *argv: str, check: bool = True, timeout: float = 600, show: bool = False,
            input_bytes: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run a command to completion in the foreground (Ctrl-C reaches it too)."""
        if show:
            self.say("$ " + " ".join(_short(a) for a in argv))
        result = subprocess.run(list(argv), capture_output=True, timeout=timeout, input=input_bytes,
                                env={**os.environ, **self.env, **(env or {})}, check=False)
        if check and result.returncode != 0:
            raise StoryError(
                f"{' '.join(argv)} failed (exit {result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')[-2000:]}{result.stderr.decode(errors='replace')[-3000:]}"
            )
        return result

    def text(self, *argv: str, **kw: Any) -> str:
        return self.cmd(*argv, **kw).stdout.decode(errors="replace")

    def edgectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.cmd(_tool("edgectl"), *args, **kw)

    def agent_cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.cmd(_tool("edge-agent"), *args, "--config", str(self.work / "agent.toml"), **kw)

    def status(self) -> dict[str, Any]:
        out = self.agent_cli("status", "--json", check=False, timeout=20)
        if out.returncode != 0:
            return {}
        try:
            return dict(json.loads(out.stdout))
        except ValueError:
            return {}

    # ------------------------------------------------------------------ the story

    def run(self, last_step: int = STEPS) -> dict[str, Any]:
        """The story; with last_step < STEPS only its first steps (`scripts/run --steps N`)."""
        self.prepare()
        steps: list[tuple[str, Any]] = [
            ("starting a local TLS broker, OCI registry, software TPM and podman service", self.step_infrastructure),
            ("creating the fleet keys and the device identity", self.step_identity),
            ("building, signing and pushing the pilot module image", self.step_image),
            ("starting the agent, enrolling its TPM, deploying a signed deployment", self.step_agent_and_deploy),
            ("the pilot drives the simulator: live status", self.step_live),
            ("a new signed model reaches the driving car; one signed by a wrong key is refused", self.step_model),
            (f"the broker goes away for {self.opts.outage_s:.0f} s and comes back", self.step_outage),
            ("a tampered image and a replayed deployment are refused", self.step_refusals),
            ("summary and pictures", self.step_summary),
        ]
        assert len(steps) == STEPS
        figures: dict[str, Any] = {}
        for n, (title, action) in enumerate(steps[:last_step], start=1):
            with self.step(n, title):
                figures = action() or {}
        return figures

    def prepare(self) -> None:
        """Clean what a previous run left behind, then a fresh work folder."""
        made_here = (self.work / WORK_MARKER).exists() or (self.work / "pids").is_dir()  # (older runs: no marker)
        if self.work.exists() and any(self.work.iterdir()) and not made_here:
            # the folder is emptied below: never one the story did not make (a mistyped --work)
            raise StoryError(f"work folder {self.work} is not empty and was not made by the quickstart "
                             f"(no {WORK_MARKER} in it): name an empty or new folder")
        self.work.parent.mkdir(parents=True, exist_ok=True)
        stale = clean_stale(self.work / "pids") if (self.work / "pids").exists() else []
        containers = remove_containers()
        if stale or containers:
            print(f"cleaned up after a previous run: {', '.join(stale + containers)}")
        if self.work.exists():
            shutil.rmtree(self.work)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.work.mkdir(mode=0o700, parents=True)
        (self.work / WORK_MARKER).write_text("a work folder of scripts/run: emptied at its next start\n")
        self.procs = Processes(self.work)
        self.env = {
            # edgectl reads broker settings from this file: no flags on every command
            "EDGECTL_CONFIG": str(self.work / "edgectl.toml"),
            "EDGECTL_ATTESTATION_DIR": str(self.work / "fleet" / "attestation"),
            # passphrase of this run's throw-away signing keys; an environment variable, never a flag
            "EDGECTL_KEY_PASSWORD": secrets.token_urlsafe(18),
        }

    # 1 ---------------------------------------------------------------------------------------
    def step_infrastructure(self) -> None:
        assert self.procs is not None
        certs = self.work / "certs"
        for args in (["ca"], ["server", "broker"], ["client", "enrollment-service"]):
            self.cmd(str(REPO / "scripts" / "make-certs.sh"), str(certs), *args)
        self.tcti = infra.start_swtpm(self.procs, self.work)
        if self.tcti:
            self.say(f"TPM       {self.tcti}  swtpm, manufactured with EK certificates")
        else:
            self.say("TPM       swtpm is not installed: attestation is skipped in this run")
        port = infra.free_port()
        makers = self.work / "tpm" / "localca" / "issuercert.pem" if self.tcti else None
        self.enrollment_conf = infra.Broker.enrollment_conf(self.work, certs, port, makers)
        # The service writes the broker's CRL first (mosquitto does not start without it), then
        # connects to the broker as soon as it is up.
        self.procs.start("enroll-service", [_tool("edgectl"), "enroll-service", "--enrollment-config",
                                            str(self.enrollment_conf)])
        self.procs.wait_ready("enroll-service", (self.work / "broker" / "edge-agent.crl").exists, 30)
        self.broker = infra.Broker(port, infra.Broker.write_conf(self.work, certs, port), self.procs)
        self.broker.start()
        self.say(f"broker    mqtts://127.0.0.1:{port}  mosquitto, mutual TLS, per-device ACL, CRL "
                 "(config/mosquitto/, broker certificate by scripts/make-certs.sh)")
        self.say("enroll    edgectl enroll-service: signs device certificates with the fleet CA "
                 + ("(policy: EK certificates from the swtpm's maker)" if self.tcti else "(by hand: no TPM)"))
        self.registry_port = infra.start_registry(self.procs, self.work)
        self.say(f"registry  http://127.0.0.1:{self.registry_port}  docker-registry (distribution), loopback only")
        self.podman_url = infra.start_podman_service(self.procs, self.work)
        self.say(f"podman    {self.podman_url}  the API the agent runs module containers through")

    # 2 ---------------------------------------------------------------------------------------
    def step_identity(self) -> None:
        certs = self.work / "certs"
        keys = self.work / "fleet" / "keys"
        keys.mkdir(parents=True)
        self.cmd(str(REPO / "scripts" / "make-certs.sh"), str(certs), "client", FLEET_USER)
        self.edgectl("enrollments", "claim", "quickstart", "--out", str(certs / "claim"), "--enrollment-config",
                     str(self.enrollment_conf), show=True)
        self.say("device identity: only a claim certificate (shared by a batch); the device makes its own key "
                 "and enrolls for CN=" + DEVICE)
        (self.work / "edgectl.toml").write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port if self.broker else 0}\n'
            f'topic_prefix = "{PREFIX}"\ntls = true\n'
            f'ca_file = "{certs}/ca.crt"\ncert_file = "{certs}/{FLEET_USER}.crt"\n'
            f'key_file = "{certs}/{FLEET_USER}.key"\n'
        )
        self.edgectl("keygen", "--output-key-prefix", str(keys / "cosign"), show=True)
        self.say("  image signing key (cosign format): the device trusts cosign.pub for this registry")
        self.edgectl("keygen", "--output-key-prefix", str(keys / "deploy"), show=True)
        self.say("  deployment signing key: the device accepts only documents signed by deploy.pub")
        device_keys = self.work / "device" / "keys"
        device_keys.mkdir(parents=True)
        for name in ("cosign.pub", "deploy.pub"):
            shutil.copy(keys / name, device_keys / name)
        (self.work / "device" / "control" / "pilot").mkdir(parents=True)
        self.say("  models travel as signed OCI artifacts, checked by the agent against cosign.pub like images")
        self.write_agent_config()
        self.cmd(_tool("edge-agent"), "config", "check", str(self.work / "agent.toml"))
        self.say(f"agent config: {self.work / 'agent.toml'} (edge-agent config check: ok)")

    def enroll_device(self) -> None:
        """The device enrolls by itself (TPM evidence approved by policy) or, without a TPM, waits
        for an operator: the story approves it the way an operator would."""
        deadline = time.monotonic() + 120
        approved = False
        while time.monotonic() < deadline:
            identity = (self.status().get("reported") or {}).get("identity") or {}
            if identity.get("state") == "valid":
                key = identity.get("keyStorage")
                self.say(f"  enrolled: {identity.get('subject')} until {identity.get('notAfter')}, key {key}")
                self.run_state.identity = identity
                return
            if identity.get("state") == "pending" and not approved:
                self.say(f"  waiting for approval: {identity.get('detail')}")
                self.edgectl("enrollments", "approve", DEVICE, "--enrollment-config", str(self.enrollment_conf),
                             show=True)
                approved = True
            time.sleep(0.5)
        raise StoryError(f"the device did not enroll within 120 s: {self.status().get('reported', {}).get('identity')}")

    def write_agent_config(self) -> None:
        certs, device = self.work / "certs", self.work / "device"
        registry = f"127.0.0.1:{self.registry_port}"
        port = self.broker.port if self.broker else 0
        # RSA: swtpm_setup certifies an RSA 2048 EK (NV 0x01c00002) and an ECC P-384 one, not the
        # ECC P-256 EK that ek_type = "ecc" reads, which would have no EK certificate.
        attestation = (f'enabled = true\ntcti = "{self.tcti}"\nek_type = "rsa"\n' if self.tcti
                       else "enabled = false\n")
        (self.work / "agent.toml").write_text(f"""\
# written by the quickstart (scripts/run); annotated reference: config/config.toml
[device]
id = "{DEVICE}"

[state]
dir = "{self.work / 'state'}"
min_free_mb = 16

[logging]
format = "text"

[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{PREFIX}"
tls = true
ca_file = "{certs}/ca.crt"
reconnect_max_delay_s = 2

[identity]
enabled = true
claim_cert = "{certs}/claim/claim.crt"
claim_key = "{certs}/claim/claim.key"
retry_s = 2

[twin]
report_min_interval_s = 0.5
report_stats_interval_s = 5

[podman]
socket = "{self.podman_url}"

[attestation]
{attestation}
[trust]
insecure_registries = ["{registry}"]
document_keys = ["{device}/keys/deploy.pub"]

[[trust.policy]]
scope = "{registry}"
keys = ["{device}/keys/cosign.pub"]

[telemetry]
runtime_dir = "{self.runtime_dir}"
{self.lifecycle_config()}""")

    def lifecycle_config(self) -> str:
        """[deployment]: bind mounts only from the story's own folders; its containers are qs-*."""
        return (
            "\n[deployment]\n"
            f'allowed_mount_roots = ["{self.work / "device"}"]\n'
            'container_prefix = "qs-"\n'
            "image_gc = false  # a shared dev machine: never remove images\n"
            "stabilisation_window_s = 5\n"
        )

    # 3 ---------------------------------------------------------------------------------------
    def step_image(self) -> None:
        self.say("base image (debootstrapped Debian bookworm, built once, about 3 minutes the first time)")
        self.cmd(str(REPO / "scripts" / "build-base-image.sh"), timeout=1800)
        self.say("pilot image (modules/pilot/build-image.sh; cached by a content label)")
        out = self.text(str(REPO / "modules" / "pilot" / "build-image.sh"), PILOT_IMAGE_LOCAL, timeout=1800)
        self.say("  " + out.strip().splitlines()[-1])
        ref = f"127.0.0.1:{self.registry_port}/{PILOT_REPO}:1.0"
        self.cmd("podman", "push", "--quiet", "--tls-verify=false", PILOT_IMAGE_LOCAL, ref, show=True)
        insecure = ["--insecure-registry", f"127.0.0.1:{self.registry_port}"]
        key = self.work / "fleet" / "keys"
        self.edgectl("sign-image", ref, "--key", str(key / "cosign.key"), *insecure, show=True)
        verified = self.text(_tool("edgectl"), "verify-image", ref, "--key", str(key / "cosign.pub"), *insecure,
                             show=True)
        self.say("  " + verified.strip().splitlines()[-1] if verified.strip() else "  verified")
        digest = re.search(r"@(sha256:[0-9a-f]{64})", verified)
        self.run_state.image = {"reference": ref, "verify": verified.strip(),
                                "digest": digest.group(1) if digest else ""}
        self.say("the model the pilot starts with, as a signed OCI artifact (edgectl push-model)")
        self.push_model("1.0", MODELS / "model.onnx", "cosign")

    def push_model(self, tag: str, model: Path, key: str, note: str | None = None) -> dict[str, Any]:
        """Push and sign a model artifact (ONNX layer + the pilot's metadata, with `note` added to
        make it a distinct artifact) as MODEL_REPO:tag."""
        registry = f"127.0.0.1:{self.registry_port}"
        ref = f"{registry}/{MODEL_REPO}:{tag}"
        metadata = MODELS / "model.json"
        if note is not None:
            meta = json.loads(metadata.read_text())
            meta["note"] = note
            metadata = self.work / "fleet" / f"model-{tag}.json"
            metadata.write_text(json.dumps(meta, indent=2))
        out = self.edgectl("push-model", ref, "--model", str(model), "--metadata", str(metadata),
                           "--key", str(self.work / "fleet" / "keys" / f"{key}.key"), "--insecure-registry", registry,
                           "--json", show=True)
        pushed = _json(out.stdout)
        if not pushed.get("layer"):
            raise StoryError(f"edgectl push-model printed no layer digest: {out.stdout[:300]!r}")
        pushed["ref"] = ref
        self.run_state.models[tag] = pushed
        self.say(f"  {ref}: model layer {str(pushed['layer'])[:19]}..., signed with {key}.key")
        return pushed

    # 4 ---------------------------------------------------------------------------------------
    def step_agent_and_deploy(self) -> None:
        assert self.procs is not None
        argv = [_tool("edge-agent"), "run", "--config", str(self.work / "agent.toml")]
        self.procs.start("edge-agent", argv)
        self.say("$ edge-agent run --config .quickstart/run/agent.toml   (in the background; log: "
                 f"{self.procs.started['edge-agent'].log})")
        self.procs.wait_ready("edge-agent", lambda: bool(self.status()), 60)
        self.enroll_device()
        self._wait(lambda: self.online(), 30, "the agent to come online on the broker")
        self.say(f"agent running, {DEVICE} online")
        # the fleet side follows the telemetry with a persistent session from now on
        certs = self.work / "certs"
        self.procs.start("fleet-telemetry", [
            _tool("edgectl"), "telemetry", DEVICE, "--host", "127.0.0.1", "--port", str(self.broker_port()),
            "--prefix", PREFIX, "--tls-ca", str(certs / "ca.crt"), "--tls-cert", str(certs / f"{FLEET_USER}.crt"),
            "--tls-key", str(certs / f"{FLEET_USER}.key"), "--client-id", "qs-fleet-telemetry", "--json",
        ], env=self.env)
        if self.tcti:
            enrolled = self.text(_tool("edgectl"), "enroll", DEVICE, show=True)
            self.say("  " + enrolled.strip().splitlines()[-1])
            attest = self.cmd(_tool("edgectl"), "attest", DEVICE, "--json", check=False, show=True)
            result = _json(attest.stdout)
            self.run_state.attestation["enroll"] = enrolled.strip()
            self.run_state.attestation["first_attest_ok"] = attest.returncode == 0
            self.say(f"  attestation: {'pass' if attest.returncode == 0 else 'FAIL'} "
                     f"({len(result.get('checks', []))} checks)")
        deployment = self.deployment(f"127.0.0.1:{self.registry_port}/{PILOT_REPO}:1.0")
        path = self.work / "fleet" / "deployment.json"
        path.write_text(json.dumps(deployment, indent=2))
        self.edgectl("deploy", DEVICE, str(path), "--key", str(self.work / "fleet" / "keys" / "deploy.key"),
                     "--wait", "120", "--until", "running", show=True)
        self.say("  deployment version 1 runs on the device (document signature checked against deploy.pub, "
                 "image signature against cosign.pub, pinned by digest)")
        # keep the signed document as published: step 7 replays it
        self.first_envelope = self.retained_desired()
        self.start_pilot()

    def deployment(self, image: str, model_tag: str = "1.0") -> dict[str, Any]:
        device = self.work / "device"
        return {"modules": {"pilot": {
            "image": image,
            "restartPolicy": "always",
            # The agent verified the model's signature and placed it at /models/current; the pilot
            # hot-swaps it and says which one it drives with (or why it refuses one).
            "args": ["drive", "--config", "/etc/edge-pilot/config.json", "--models", "/models/current",
                     "--allow-unsigned"],
            # The agent mounts the module's own telemetry socket at /run/edge-agent and sets
            # EDGE_TELEMETRY_SOCKET (docs/telemetry.md): nothing to write here.
            "env": {},
            "artifacts": [{"ref": self.run_state.models[model_tag]["ref"], "path": "/models", "confirm": True}],
            "mounts": [
                {"source": str(device / "control" / "pilot"), "target": "/control", "readOnly": True},
            ],
            "network": "none",  # telemetry goes through the mounted socket; the pilot needs no network
            "labels": {QS_LABEL: "1"},
        }}}

    def start_pilot(self) -> None:
        """The agent runs the pilot container (verified image, by digest)."""
        self.run_state.pilot_mode = "container (run by the agent)"
        self._wait(lambda: self.module_running(), 180, "the agent to start the pilot container")
        self.say("the agent verified the image signature and started the pilot container")
        self.run_state.pilot_t0 = time.monotonic()
        self._sampler = threading.Thread(target=self._sample_queue, name="queue-sampler", daemon=True)
        self._sampler.start()

    # 5 ---------------------------------------------------------------------------------------
    def step_live(self) -> None:
        self._wait(lambda: len(self.stats_records()) >= 3, 90, "pilot telemetry to reach the fleet side")
        deadline = time.monotonic() + self.opts.drive_s
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            last = self.stats_records()[-1]["payload"]
            self.say(self.live_line(last))
        status = self.text(_tool("edge-agent"), "status", "--config", str(self.work / "agent.toml"),
                           show=True, check=False)
        self.say(_trim(status))
        show = self.text(_tool("edgectl"), "show", DEVICE, show=True, check=False)
        self.say(show.rstrip())
        if self.tcti and self.run_state.image.get("digest"):
            self.attest_running_images()

    # 6 ---------------------------------------------------------------------------------------
    def step_model(self) -> None:
        """A new signed model is delivered while the car drives: the pilot switches to it without
        its container restarting; then a model signed by a key the device does not trust is
        refused and the car keeps driving with the one it has."""
        before = self.pilot_module()
        records_before = len(self.stats_records())
        new = self.push_model("2.0", MODELS / "model.int8.onnx", "cosign")
        started = time.monotonic()
        # The deploy waits until the version is good (its stabilisation window included); the car
        # drives with the new model long before, so the switch is timed while the deploy waits.
        with ThreadPoolExecutor(max_workers=1) as pool:
            deployed = pool.submit(self.deploy_model, "2.0", "deployment-model-2.json", expect_ok=True)
            self._wait(lambda: deployed.done() or self.model_in_use() == new["layer"], 240,
                       "the pilot to drive with the new model")
            switched_s = time.monotonic() - started
            switched_at = time.time()
            deployed.result()  # the deploy's own verdict (a StoryError when it did not become good)
        self._wait(lambda: self.model_in_use() == new["layer"], 60, "the pilot to drive with the new model")
        after = self.pilot_module()
        same = bool(before.get("containerId")) and before.get("containerId") == after.get("containerId")
        self.say(f"  the pilot drives with model {str(new['layer'])[:19]}... {switched_s:.1f} s after `edgectl deploy` "
                 f"was started (seen by polling `edge-agent status`), "
                 f"container {after.get('containerId')} {'unchanged' if same else 'RE-CREATED'}")
        if not same:
            raise StoryError(f"the model update re-created the pilot container: {before} -> {after}")
        self._wait(lambda: len(self.stats_records()) > records_before + 2, 60, "pilot telemetry after the switch")
        # a model signed by a stranger: the device refuses the whole version before anything changes
        self.edgectl("keygen", "--output-key-prefix", str(self.work / "fleet" / "keys" / "stranger"))
        # (a distinct artifact: the same bytes as 1.0 would carry 1.0's valid signature)
        self.push_model("3.0", MODELS / "model.onnx", "stranger", note="signed by a key the device does not trust")
        said = self.deploy_model("3.0", "deployment-model-3.json", expect_ok=False)
        still = self.model_in_use() == new["layer"] and self.pilot_module().get("containerId") == after["containerId"]
        self.say(f"  the car keeps driving with model {str(new['layer'])[:19]}...: {'yes' if still else 'NO'}")
        self.run_state.model_update = {
            "first_layer": self.run_state.models["1.0"]["layer"], "new_layer": new["layer"],
            "switch_s": round(switched_s, 1), "switched_at": switched_at, "container_unchanged": same,
            "wrong_key_refusal": said, "still_on_new_model": still,
        }
        show = self.text(_tool("edgectl"), "show", DEVICE, show=True, check=False)
        self.say(show.rstrip())

    def deploy_model(self, tag: str, name: str, *, expect_ok: bool) -> str:
        deployment = self.deployment(self.run_state.image["reference"], tag)
        path = self.work / "fleet" / name
        path.write_text(json.dumps(deployment, indent=2))
        out = self.edgectl("deploy", DEVICE, str(path), "--key", str(self.work / "fleet" / "keys" / "deploy.key"),
                           "--wait", "240", "--until", "good", check=False, show=True)
        said = (out.stdout + out.stderr).decode(errors="replace").strip()
        if (out.returncode == 0) != expect_ok:
            raise StoryError(f"edgectl deploy of model {tag} exited {out.returncode}: {said[-600:]}")
        self.say(f"  edgectl deploy exited {out.returncode}: {said.splitlines()[-1] if said else ''}")
        return said.splitlines()[-1] if said else ""

    def pilot_module(self) -> dict[str, Any]:
        return dict((self.reported().get("modules") or {}).get("pilot") or {})

    def model_in_use(self) -> str | None:
        using = (self.pilot_module().get("moduleReport") or {}).get("using") or []
        return str(using[0]) if using else None

    def attest_running_images(self) -> None:
        """A fresh TPM quote: do the measured module images match the deployment (PCR 23)?"""
        attest = self.cmd(_tool("edgectl"), "attest", DEVICE, "--image", f"pilot={self.run_state.image['digest']}",
                          "--json", check=False, show=True)
        result = _json(attest.stdout)
        checks = {c.get("name"): c for c in result.get("checks", []) if isinstance(c, dict)}
        image = checks.get("image_deployment") or {}
        self.run_state.attestation["running_images"] = {
            "passed": attest.returncode == 0, "failed": result.get("failed"), "image_deployment": image}
        if attest.returncode == 0:
            self.say("  attestation: pass; the TPM-quoted image log shows exactly the signed pilot image running")
        else:
            self.say(f"  attestation: FAILED checks {result.get('failed')}: "
                     f"{image.get('status')}: {image.get('detail')}")

    def live_line(self, p: dict[str, Any]) -> str:
        # capture to actuate (the frame's age included); an older pilot only reports its tick time
        lat = p.get("latency_ms", {}).get("capture_to_actuate") or p.get("latency_ms", {}).get("total", {})
        depth = self.run_state.queue_samples[-1][1] if self.run_state.queue_samples else 0
        sim = p.get("sim", {})
        return (f"pilot: {p.get('fps', 0):5.1f} fps  capture-to-actuate p50 {lat.get('p50', 0):5.1f} ms "
                f"p99 {lat.get('p99', 0):5.1f} ms  laps {sim.get('laps', 0):5.2f}  "
                f"cross-track {sim.get('cte_m', 0):+.2f} m  queue {depth}  received {len(self.stats_records())}")

    # 7 ---------------------------------------------------------------------------------------
    def step_outage(self) -> None:
        assert self.broker is not None
        before = len(self.stats_records())
        t_down = self.since_pilot()
        self.broker.stop()
        self.say("broker stopped (mosquitto killed); the agent keeps the deployment running offline")
        deadline = time.monotonic() + self.opts.outage_s
        peak = 0
        while time.monotonic() < deadline:
            time.sleep(min(4.0, max(0.0, deadline - time.monotonic())))
            depth = self.run_state.queue_samples[-1][1] if self.run_state.queue_samples else 0
            peak = max(peak, depth)
            alive = self.module_running()
            self.say(f"offline: queue {depth} records on the device, pilot {'driving' if alive else 'NOT RUNNING'}, "
                     f"fleet side received {len(self.stats_records())}")
        t_up = self.since_pilot()
        self.broker.start()
        self.say("broker back; the agent reconnects and uploads what it queued")
        self._wait(lambda: self.depth() <= 2 and self.online(), 60, "the queue to drain after reconnecting")
        time.sleep(2)
        records = self.stats_records()
        during = [r for r in records if t_down <= self.ts_since_pilot(r) <= t_up]
        laps_offline = [float((r["payload"].get("sim") or {}).get("laps", 0.0)) for r in during]
        driven = round(max(laps_offline) - min(laps_offline), 3) if laps_offline else 0.0
        seqs = sorted(int(r["seq"]) for r in records)
        missing = (seqs[-1] - seqs[0] + 1 - len(set(seqs))) if seqs else 0
        peak = max([peak] + [d for t, d in self.run_state.queue_samples if t >= t_down])
        self.run_state.outage = (t_down, t_up)
        self.run_state.outage_figures = {
            "seconds": round(t_up - t_down, 1), "queue_peak": peak, "records_before": before,
            "records_made_while_offline_and_uploaded": len(during), "records_total": len(records),
            "missing_sequence_numbers": missing, "laps_driven_while_offline": driven,
        }
        self.say(f"queued while offline: peak {peak}; uploaded after reconnect: {len(during)} records made "
                 f"during the outage; total received {len(records)}, missing {missing}")
        self.say(f"the car kept driving: {driven} laps while the broker was away (from those records)")

    # 8 ---------------------------------------------------------------------------------------
    def step_refusals(self) -> None:
        registry = f"127.0.0.1:{self.registry_port}"
        ref = f"{registry}/{PILOT_REPO}:1.0"
        ctx = self.work / "tampered"
        ctx.mkdir()
        (ctx / "Containerfile").write_text(f"FROM {PILOT_IMAGE_LOCAL}\nCOPY payload /opt/payload\n")
        (ctx / "payload").write_text("not what the fleet signed\n")
        self.cmd("podman", "build", "--quiet", "-t", "localhost/qs-pilot:tampered", str(ctx))
        self.cmd("podman", "push", "--quiet", "--tls-verify=false", "localhost/qs-pilot:tampered", ref, show=True)
        self.say("  someone pushed a modified image under the signed tag")
        key = self.work / "fleet" / "keys" / "cosign.pub"
        verify = self.cmd(_tool("edgectl"), "verify-image", ref, "--key", str(key), "--insecure-registry", registry,
                          check=False, show=True)
        verdict = (verify.stdout + verify.stderr).decode(errors="replace").strip()
        self.say("  " + verdict.splitlines()[-1] if verdict else "  (no output)")
        self.run_state.refusals["tampered_image_fleet_check"] = {"exit": verify.returncode, "output": verdict}
        if verify.returncode == 0:
            raise StoryError("edgectl verify-image accepted the tampered image")
        # the device: a new deployment (version 2) that would pick up the tampered tag
        deployment = self.deployment(ref, "2.0")
        deployment["modules"]["pilot"]["env"]["QS_DEPLOYMENT"] = "2"
        path = self.work / "fleet" / "deployment-2.json"
        path.write_text(json.dumps(deployment, indent=2))
        deployed = self.edgectl("deploy", DEVICE, str(path), "--key", str(self.work / "fleet" / "keys" / "deploy.key"),
                                "--wait", "120", check=False, show=True)
        said = deployed.stderr.decode(errors="replace").strip()
        if deployed.returncode == 0 or "rejected" not in said:
            raise StoryError(f"edgectl deploy --wait should have failed with the device's rejection: {said!r}")
        refused = self._wait_value(self.image_refusal, 30, "the device to report the rejected image")
        self.say(f"  edgectl deploy exited {deployed.returncode}: {said.splitlines()[-1]}")
        self.say(f"  device rejected the image: {refused}")
        self.run_state.refusals["tampered_image_device"] = refused
        self.run_state.refusals["tampered_image_edgectl"] = {"exit": deployed.returncode, "stderr": said}
        still = self.module_running()
        self.say(f"  the signed pilot keeps driving: {'yes' if still else 'NO'}")
        self.run_state.refusals["pilot_still_running"] = still
        # the replay: the broker (or anyone who can publish there) re-sends the old signed document
        self.say("replaying the signed deployment version 1 (captured from the broker) as the retained desired")
        self.cmd(*self.mqtt_client("mosquitto_pub"), "-t", f"{PREFIX}/{DEVICE}/desired", "-r", "-q", "1", "-s",
                 input_bytes=self.first_envelope, show=True)
        status = self._wait_value(self.replay_refusal, 30, "the device to refuse the replayed document")
        self.say(f"  device refused it: {status.get('code')}: {status.get('description')}")
        self.run_state.refusals["replayed_deployment"] = status
        show = self.text(_tool("edgectl"), "show", DEVICE, show=True, check=False)
        self.say(show.rstrip())

    # 9 ---------------------------------------------------------------------------------------
    def step_summary(self) -> dict[str, Any]:
        self._sampler_stop.set()
        if self._sampler:
            self._sampler.join(5)
        out = self.opts.out
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        records = self.stats_records()
        path: list[tuple[float, float]] = []
        latencies: list[float] = []
        ticks: list[float] = []
        laps = 0.0
        fps: list[float] = []
        for rec in records:
            p = rec["payload"]
            sim = p.get("sim") or {}
            path.extend((float(x), float(y)) for x, y in sim.get("path", []))
            laps = max(laps, float(sim.get("laps", 0.0)))
            latencies.extend(float(v) for v in p.get("capture_to_actuate_ms", p.get("total_ms", [])))
            ticks.extend(float(v) for v in p.get("total_ms", []))
            if p.get("fps"):
                fps.append(float(p["fps"]))
        mean_cte = float((records[-1]["payload"].get("sim") or {}).get("mean_abs_cte_m", 0.0)) if records else 0.0
        # where the car was when it first reported driving with the new model (the first record after)
        marks = []
        switched_at = self.run_state.model_update.get("switched_at")
        after = [r for r in records if switched_at and float(r.get("ts", 0)) >= switched_at]
        first_after = ((after[0]["payload"].get("sim") or {}).get("path") or []) if after else []
        if first_after:
            marks.append(((float(first_after[0][0]), float(first_after[0][1])), "new model"))
            self.run_state.model_update["marked_on_track"] = True
        pictures.track_picture(path, out / "track.png",
                               f"{laps:.2f} laps, mean |cross-track| {mean_cte:.3f} m, {len(path)} positions",
                               marks)
        latency = pictures.latency_picture(latencies, out / "latency.png")
        pictures.queue_picture(self.run_state.queue_samples, self.run_state.outage, out / "queue.png")
        figures: dict[str, Any] = {
            "device": DEVICE,
            "pilot_mode": self.run_state.pilot_mode,
            "steps": self.run_state.steps,
            "pilot": {"stats_records": len(records), "laps": round(laps, 3), "mean_abs_cte_m": mean_cte,
                      "path_points": len(path), "fps_mean": round(sum(fps) / len(fps), 2) if fps else 0.0,
                      "latency_ms": latency,
                      # the tick alone (newest frame read to actuator), without the frame's age
                      "tick_ms": {"p50_ms": round(_percentile(ticks, 50), 2),
                                  "p99_ms": round(_percentile(ticks, 99), 2)} if ticks else {}},
            "outage": self.run_state.outage_figures,
            "queue_depth": [[round(t, 1), d] for t, d in self.run_state.queue_samples],
            "refusals": self.run_state.refusals,
            "model_update": self.run_state.model_update,
            "attestation": self.run_state.attestation,
            "identity": {k: self.run_state.identity.get(k) for k in ("subject", "notAfter", "keyStorage", "state")},
            "image": self.run_state.image,
            "pictures": ["track.png", "latency.png", "queue.png"],
        }
        (out / "figures.json").write_text(json.dumps(figures, indent=2))
        o = self.run_state.outage_figures
        tick = figures["pilot"]["tick_ms"]
        self.say(f"pilot: {laps:.2f} laps in the simulator, {figures['pilot']['fps_mean']} fps, capture-to-actuate "
                 f"p50 {latency.get('p50_ms', 0)} ms / p99 {latency.get('p99_ms', 0)} ms "
                 f"({latency.get('frames', 0)} frames; the tick alone p50 {tick.get('p50_ms', 0)} ms)")
        self.say(f"outage: {o.get('seconds')} s offline, queue peaked at {o.get('queue_peak')} records, "
                 f"{o.get('records_made_while_offline_and_uploaded')} uploaded after reconnect, "
                 f"{o.get('missing_sequence_numbers')} missing, "
                 f"{o.get('laps_driven_while_offline')} laps driven offline")
        r = self.run_state.refusals
        self.say(f"refused: tampered image (fleet check exit {r.get('tampered_image_fleet_check', {}).get('exit')}"
                 f"{'; device: ' + str(r['tampered_image_device']) if 'tampered_image_device' in r else ''}), "
                 f"replayed deployment ({(r.get('replayed_deployment') or {}).get('code')})")
        m = self.run_state.model_update
        self.say(f"model update: the driving car switched to {str(m.get('new_layer'))[:19]}... in "
                 f"{m.get('switch_s')} s without a container restart; a wrong-key model was refused "
                 f"({m.get('wrong_key_refusal')})")
        self.say(f"pictures and figures: {out}/track.png latency.png queue.png figures.json")
        return figures

    # ------------------------------------------------------------------ helpers

    def cleanup(self) -> None:
        self._sampler_stop.set()
        if self.procs:
            # the agent first (it stops cleanly), then what it talks to
            self.procs.stop("pilot")
            self.procs.stop("edge-agent", grace=10)
            self.procs.stop_all()
        remove_containers()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def broker_port(self) -> int:
        return self.broker.port if self.broker else 0

    def mqtt_client(self, tool: str) -> list[str]:
        certs = self.work / "certs"
        return [infra.need(tool), "-h", "127.0.0.1", "-p", str(self.broker_port()), "--cafile", str(certs / "ca.crt"),
                "--cert", str(certs / f"{FLEET_USER}.crt"), "--key", str(certs / f"{FLEET_USER}.key")]

    def retained_desired(self) -> bytes:
        out = self.cmd(*self.mqtt_client("mosquitto_sub"), "-t", f"{PREFIX}/{DEVICE}/desired", "-C", "1",
                       "-W", "10", "-N")
        if not out.stdout:
            raise StoryError("no retained desired document on the broker")
        return out.stdout

    def show_json(self) -> dict[str, Any]:
        return _json(self.edgectl("show", DEVICE, "--json", check=False, timeout=30).stdout)

    def online(self) -> bool:
        return self.show_json().get("presence") == "online"

    def reported(self) -> dict[str, Any]:
        return dict(self.status().get("reported") or {})

    def depth(self) -> int:
        return int((self.reported().get("telemetry") or {}).get("depth") or 0)

    def module_running(self) -> bool:
        mod = (self.reported().get("modules") or {}).get("pilot") or {}
        return str(mod.get("runtimeStatus", "")).lower() == "running"

    def image_refusal(self) -> str | None:
        versions = (self.reported().get("deployment") or {}).get("versions") or {}
        for version, entry in sorted(versions.items(), key=lambda kv: -int(kv[0])):
            if entry.get("state") == "rejected":
                return (f"version {version} rejected: {entry.get('code')}: module {entry.get('module')}: "
                        f"{entry.get('description')}")
        return None

    def replay_refusal(self) -> dict[str, Any] | None:
        refused = (self.reported().get("deployment") or {}).get("lastRefused") or {}
        return dict(refused) if refused.get("code") == "replayed" else None

    def stats_records(self) -> list[dict[str, Any]]:
        path = self.procs.started["fleet-telemetry"].log if self.procs and "fleet-telemetry" in self.procs.started \
            else self.work / "logs" / "fleet-telemetry.log"
        out = []
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    rec = _json(line.encode())
                    if rec.get("stream") == "pilot.stats" and isinstance(rec.get("payload"), dict):
                        out.append(rec)
        return out

    def since_pilot(self) -> float:
        return time.monotonic() - (self.run_state.pilot_t0 or self.run_state.t0)

    def ts_since_pilot(self, rec: dict[str, Any]) -> float:
        # record ts is wall-clock; map it onto the story's monotonic timeline
        return float(rec.get("ts", 0)) - (time.time() - self.since_pilot())

    def _sample_queue(self) -> None:
        while not self._sampler_stop.wait(1.0):
            with contextlib.suppress(Exception):
                status = self.status()
                tel = (status.get("reported") or {}).get("telemetry") or {}
                if "depth" in tel:
                    self.run_state.queue_samples.append((self.since_pilot(), int(tel["depth"])))

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        self._wait_value(lambda: True if predicate() else None, timeout, what)

    def _wait_value(self, get: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = get()
            if value:
                return value
            self._check_alive()
            time.sleep(0.5)
        raise StoryError(f"timed out after {timeout:.0f} s waiting for {what}; agent log tail:\n"
                         f"{tail(self.work / 'logs' / 'edge-agent.log', 30)}")

    def _check_alive(self) -> None:
        if self.procs and "edge-agent" in self.procs.started and not self.procs.alive("edge-agent"):
            raise StoryError(f"the agent exited; log tail:\n{tail(self.work / 'logs' / 'edge-agent.log', 40)}")


def _tool(name: str) -> str:
    # The console script next to this interpreter first: another install earlier on PATH (a
    # stale global one) would run other code than this checkout's.
    venv = Path(sys.executable).parent / name
    if venv.exists():
        return str(venv)
    path = shutil.which(name)
    if path is None:
        raise StoryError(f"{name} is not on PATH: run scripts/run (it installs the agent into .venv)")
    return path


def _short(arg: str) -> str:
    """Tools by name and repository paths relative, so the printed commands stay readable."""
    if arg.startswith("/") and os.path.dirname(arg).endswith("/bin"):
        return os.path.basename(arg)
    if arg.startswith("/") and Path(arg).is_relative_to(REPO):
        return os.path.relpath(arg, REPO)
    return arg


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _trim(text: str, width: int = 170) -> str:
    """Long status lines (JSON sections) cut to one terminal line each."""
    return "\n".join(line if len(line) <= width else line[: width - 3] + "..." for line in text.splitlines())
