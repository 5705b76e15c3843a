"""A fleet for the identity tests: a fleet CA, a real mosquitto with mutual TLS, the shipped ACL
(config/mosquitto/edge-agent.acl, with the revoked-device blocks edgectl writes) and a CRL, the
real enrollment service (`edgectl enroll-service`), and devices running the real agent with a
claim certificate and a real swtpm manufactured with EK certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import ManagedProcess, wait_until
from devinfra.swtpm import Swtpm
from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient
from edgectl.enrollment import evidence
from edgectl.enrollment.ca import FleetCa, cert_pem, key_pem, new_key

REPO = Path(__file__).resolve().parents[3]
PREFIX = "edge"


def edgectl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


class Fleet:
    def __init__(self, workdir: Path, cert_lifetime_s: int = 3600, trusted_makers: list[Path] | None = None) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self.ca = FleetCa.create()
        self.ca_cert, self.ca_key = workdir / "fleet-ca.crt", workdir / "fleet-ca.key"
        self.ca.save(self.ca_cert, self.ca_key)
        self._leaf("broker", self.ca.issue_server, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self._leaf("enrollment-service", self.ca.issue_device)
        self._leaf("fleet-ops", self.ca.issue_device)
        self.claim_cert, self.claim_key = workdir / "claim.crt", workdir / "claim.key"
        self.acl_base = workdir / "edge-agent.acl.base"
        self.acl_base.write_text((REPO / "config" / "mosquitto" / "edge-agent.acl").read_text())
        self.acl_file = workdir / "edge-agent.acl"
        self.acl_file.write_text(self.acl_base.read_text())
        self.crl_file = workdir / "edge-agent.crl"
        self.crl_file.write_bytes(self.ca.crl([], now, dt.timedelta(days=7)))
        self.allowlist = workdir / "ek-allowlist.txt"
        self.allowlist.write_text("# EK SHA-256 hashes approved by policy\n")
        makers = workdir / "tpm-makers.pem"
        makers.write_bytes(b"".join(p.read_bytes() for p in trusted_makers or []))
        self.pid_file = workdir / "mosquitto.pid"
        extra = (
            f"cafile {self.ca_cert}\ncertfile {workdir / 'broker.crt'}\nkeyfile {workdir / 'broker.key'}\n"
            f"require_certificate true\nuse_identity_as_username true\ncrlfile {self.crl_file}\n"
            f"acl_file {self.acl_file}\npid_file {self.pid_file}\n"
        )
        self.broker = Mosquitto(workdir / "broker", extra_conf=extra, anonymous=False)
        self.config = workdir / "enrollment.toml"
        self.config.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\ntls = true\nca_file = "{self.ca_cert}"\n'
            f'cert_file = "{workdir / "enrollment-service.crt"}"\nkey_file = "{workdir / "enrollment-service.key"}"\n'
            f'client_id = "enrollment-service"\n'
            f'[enrollment]\nca_cert = "{self.ca_cert}"\nca_key = "{self.ca_key}"\n'
            f'database = "{workdir / "enrollment.db"}"\ncert_lifetime_s = {cert_lifetime_s}\n'
            f'ek_allowlist = "{self.allowlist}"\n'
            + (f'tpm_maker_cas = "{makers}"\n' if trusted_makers else "")
            + f'crl_file = "{self.crl_file}"\nacl_base = "{self.acl_base}"\nacl_file = "{self.acl_file}"\n'
            f'broker_pid_file = "{self.pid_file}"\n'
        )
        self.service: ManagedProcess | None = None
        # The batch's claim certificate, made the way an operator makes it.
        out = self.edgectl("enrollments", "claim", "batch-1", "--out", str(workdir), "--days", "30")
        assert out.returncode == 0, out.stderr

    def _leaf(self, name: str, issue: Callable[..., x509.Certificate], sans: list[x509.GeneralName] | None = None
              ) -> None:
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        args: list[Any] = [name, key.public_key(), dt.timedelta(days=30), now]
        if sans is not None:
            args.append(sans)
        (self.dir / f"{name}.key").write_bytes(key_pem(key))
        (self.dir / f"{name}.crt").write_bytes(cert_pem(issue(*args)))

    def start(self) -> Fleet:
        self.broker.start()
        wait_until(self.pid_file.exists, 10, "mosquitto's pid file")
        self.service = ManagedProcess(
            "enroll-service",
            [sys.executable, "-m", "edgectl.cli", "enroll-service", "--enrollment-config", str(self.config)],
            self.dir / "enroll-service.log", env={"PYTHONPATH": str(REPO)},
        )
        self.service.start()
        self.service.wait_ready(lambda: "EVENT=enrollment.listening" in self.service_log() or
                                "listening on" in self.service_log())
        return self

    def stop(self) -> None:
        if self.service:
            self.service.stop()
        self.broker.stop()

    def service_log(self) -> str:
        path = self.dir / "enroll-service.log"
        return path.read_text() if path.exists() else ""

    def edgectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return edgectl(*args, "--enrollment-config", str(self.config))

    def records(self) -> dict[str, dict[str, Any]]:
        out = self.edgectl("enrollments", "list", "--json")
        assert out.returncode == 0, out.stderr
        return {r["device_id"]: r for r in json.loads(out.stdout)}

    def allow(self, ek_hash: str) -> None:
        with self.allowlist.open("a") as f:
            f.write(ek_hash + "\n")

    def mqtt(self, cert: str) -> MqttSection:
        return MqttSection(host="127.0.0.1", port=self.broker.port, tls=True, ca_file=self.ca_cert,
                           cert_file=self.dir / f"{cert}.crt", key_file=self.dir / f"{cert}.key")

    def fleet_client(self) -> FleetClient:
        return FleetClient(broker_params(self.mqtt("fleet-ops"), f"fleet-ops-{time.monotonic_ns()}"), PREFIX)

    async def reported(self, device: str, predicate: Callable[[dict[str, Any]], bool], what: str,
                       timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        async with self.fleet_client() as fleet:
            while time.monotonic() < deadline:
                last = (await fleet.view(device)).reported or {}
                if predicate(last):
                    return last
                await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last: {json.dumps(last.get('identity'))}")


def ek_hash_of(tpm: Swtpm) -> str:
    """The EK hash the service computes, read from the TPM like an operator would list it."""
    backend = SubprocessTpm(tpm.tcti, "rsa", None, call_timeout=60, idle_timeout=5)
    try:
        return evidence.ek_hash(backend.endorsement().ek_public)
    finally:
        backend.close()


class Device:
    def __init__(self, fleet: Fleet, workdir: Path, device_id: str, tpm: Swtpm | None, *,
                 document_keys: list[Path] | None = None, identity: dict[str, object] | None = None,
                 extra: str = "", env: dict[str, str] | None = None) -> None:
        self.fleet = fleet
        self.id = device_id
        self.tpm = tpm
        settings = {"enabled": True, "claim_cert": str(fleet.claim_cert), "claim_key": str(fleet.claim_key),
                    "retry_s": 1.0, **(identity or {})}
        identity_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        attestation = (f'[attestation]\nenabled = true\ntcti = "{tpm.tcti}"\nek_type = "rsa"\n' if tpm
                       else "[attestation]\nenabled = false\n")
        trust = ("[trust]\ndocument_keys = [" + ", ".join(f'"{k}"' for k in document_keys) + "]\n"
                 if document_keys else '[trust]\ndocument_mode = "off"\n')
        config = (
            f'[device]\nid = "{device_id}"\n[logging]\nlevel = "info"\nformat = "text"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {fleet.broker.port}\ntopic_prefix = "{PREFIX}"\ntls = true\n'
            f'ca_file = "{fleet.ca_cert}"\nreconnect_max_delay_s = 2\nkeepalive_s = 5\n'
            f"[twin]\nreport_min_interval_s = 0.2\n[identity]\n{identity_lines}{attestation}{trust}"
            '[[trust.policy]]\nscope = "*"\nmode = "off"\n' + extra
        )
        self.agent = AgentProcess(workdir, config, env={"PYTHONPATH": str(REPO), **(env or {})})

    @property
    def identity_dir(self) -> Path:
        return self.agent.state_dir / "identity"

    def identity(self) -> dict[str, Any]:
        result = self.agent.call("identity")
        assert isinstance(result, dict)
        return result

    def wait_identity(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60) -> dict[
            str, Any]:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            try:
                last = self.identity()
            except (OSError, RuntimeError):
                return False
            return predicate(last)

        try:
            wait_until(check, timeout, what, interval=0.2)
        except Exception as exc:
            raise AssertionError(f"{exc}; last identity: {last}\n{self.agent.log()[-3000:]}") from None
        return last
