"""Enrollment end to end: real mosquitto (mutual TLS, the shipped ACL, a CRL), the real
enrollment service, real agents with only a claim certificate and a real swtpm each (every
swtpm manufactured with EK certificates by its own maker CA)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devinfra.swtpm import Swtpm
from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_agent.identity import evidence
from edge_agent.identity.client import EnrollmentRefused, exchange
from edge_agent.identity.keystore import client_tls_context
from edge_shared import enrollment as wire
from edge_shared.mqtt_client import PublishRefused, make_client
from edge_shared.mqtt_params import BrokerParams
from tests.integration.identity.fleet_env import PREFIX, Device, Fleet, edgectl, ek_hash_of


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          timeout=60)


def csr_for(device_id: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def claim_tls(fleet: Fleet) -> object:
    key = serialization.load_pem_private_key(fleet.claim_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return client_tls_context(fleet.ca_cert, fleet.claim_cert.read_bytes(), key)


@pytest.fixture
def tpms(tmp_path: Path) -> Iterator[list[Swtpm]]:
    started: list[Swtpm] = []
    yield started
    for tpm in started:
        tpm.stop()


def new_tpm(tmp_path: Path, name: str, started: list[Swtpm]) -> Swtpm:
    tpm = Swtpm(tmp_path / name).manufacture().start()
    started.append(tpm)
    return tpm


async def test_claim_certificate_and_tpm_enroll_by_ek_policy_then_signed_deployment_second_waits_forged_refused(
    tmp_path: Path, tpms: list[Swtpm]
) -> None:
    tpm1 = new_tpm(tmp_path, "tpm1", tpms)
    tpm2 = new_tpm(tmp_path, "tpm2", tpms)  # another maker, not trusted, not listed
    fleet = Fleet(tmp_path / "fleet").start()
    fleet.allow(ek_hash_of(tpm1))
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": "pw"}
    out = edgectl("keygen", "--output-key-prefix", str(tmp_path / "fleet"), env=env)
    assert out.returncode == 0, out.stderr
    first = Device(fleet, tmp_path / "dev1", "rover-01", tpm1, document_keys=[tmp_path / "fleet.pub"])
    second = Device(fleet, tmp_path / "dev2", "rover-02", tpm2)
    try:
        first.agent.start()
        second.agent.start()
        # By EK policy: enrolled with no human, key sealed to its TPM (no clear key on disk).
        enrolled = first.wait_identity(lambda s: s["state"] == "valid", "rover-01 enrolled")
        assert enrolled["subject"] == "CN=rover-01" and enrolled["keyStorage"] == "tpm-sealed"
        assert sorted(p.name for p in first.identity_dir.iterdir()) == ["device.crt", "device.key.tpm"]
        assert b"PRIVATE KEY" not in (first.identity_dir / "device.key.tpm").read_bytes()
        assert fleet.records()["rover-01"]["status"] == "enrolled"
        reported = await fleet.reported("rover-01", lambda d: (d.get("identity") or {}).get("state") == "valid",
                                        "rover-01 reporting as itself")
        assert reported["identity"]["subject"] == "CN=rover-01"
        # Shown on the device (status, check) and on the fleet side (edgectl devices, CERT column).
        local = ["--config", str(first.agent.config_path), "--state-dir", str(first.agent.state_dir)]
        status = agent_cli("status", *local)
        assert "identity    CN=rover-01: valid, expires" in status.stdout, status.stdout + status.stderr
        assert "key tpm-sealed" in status.stdout
        check = agent_cli("check", *local, "--json")
        results = {r["name"]: r for r in json.loads(check.stdout)}
        assert results["device certificate"]["outcome"] == "pass", results["device certificate"]
        assert "CN=rover-01" in results["device certificate"]["detail"]
        devices = edgectl("devices", "--broker", "127.0.0.1", "--port", str(fleet.broker.port), "--tls-ca",
                          str(fleet.ca_cert), "--tls-cert", str(fleet.dir / "fleet-ops.crt"), "--tls-key",
                          str(fleet.dir / "fleet-ops.key"))
        header, *rows = devices.stdout.splitlines()
        assert "CERT" in header and any(re.match(r"rover-01 .* (59|60)m", r) for r in rows), devices.stdout

        # ...and then accepts a signed deployment as itself (the per-device ACL applies).
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps({"modules": {}}))
        flags = ["--broker", "127.0.0.1", "--port", str(fleet.broker.port), "--tls-ca", str(fleet.ca_cert),
                 "--tls-cert", str(fleet.dir / "fleet-ops.crt"), "--tls-key", str(fleet.dir / "fleet-ops.key")]
        deploy = edgectl("deploy", *flags, "rover-01", str(manifest), "--key", str(tmp_path / "fleet.key"),
                         "--wait", "30", "--until", "accepted", env=env)
        assert deploy.returncode == 0, deploy.stderr + first.agent.log()[-3000:]
        # (--until accepted returns at "accepted" or any later state)
        assert re.search(r"rover-01: version 1 (accepted|activating|running|good)", deploy.stdout), deploy.stdout

        # The second device (same claim certificate, a TPM nobody vouches for) waits for approval.
        waiting = second.wait_identity(lambda s: s["state"] == "pending", "rover-02 pending")
        assert "edgectl enrollments approve rover-02" in waiting["detail"]
        assert fleet.records()["rover-02"]["status"] == "pending"
        assert not (second.identity_dir / "device.crt").exists()

        # A forged CSR for an existing id is refused: from another TPM's evidence-less claim
        # connection, and from a device with its own (valid) TPM evidence.
        _, csr = csr_for("rover-01")
        forged = wire.EnrollRequest(kind="enroll", device_id="rover-01", csr=csr)
        with pytest.raises(EnrollmentRefused, match="already claimed by another TPM"):
            await exchange("127.0.0.1", fleet.broker.port, claim_tls(fleet), PREFIX, forged, retry_s=5)  # type: ignore[arg-type]
        # ...and from a real TPM of its own, with valid evidence (the EK differs from rover-01's).
        forger_tpm = new_tpm(tmp_path, "forger", tpms)
        _, forged_csr = csr_for("rover-01")
        der = x509.load_pem_x509_csr(forged_csr.encode()).public_bytes(serialization.Encoding.DER)
        forger = SubprocessTpm(forger_tpm.tcti, "rsa", None, call_timeout=60, idle_timeout=5)
        try:
            proof = evidence.tpm_evidence(forger.endorsement(), forger.ak_public(),
                                          forger.quote(list(evidence.QUOTE_PCRS), wire.csr_digest(der)))
        finally:
            forger.close()
        with_tpm = wire.EnrollRequest(kind="enroll", device_id="rover-01", csr=forged_csr, tpm=proof)
        with pytest.raises(EnrollmentRefused, match="already claimed by another TPM"):
            await exchange("127.0.0.1", fleet.broker.port, claim_tls(fleet), PREFIX, with_tpm, retry_s=5)  # type: ignore[arg-type]
        # The claim certificate reaches nothing but enrollment: not a device's topics, not
        # another request's answer.
        params = BrokerParams("127.0.0.1", fleet.broker.port, wire.new_client_id(), None, None,
                              claim_tls(fleet), 30)  # type: ignore[arg-type]
        async with make_client(params) as client:
            for topic in ("edge/rover-01/reported", "edge/rover-01/telemetry/x", "edge/enroll/enroll-"
                          + "0" * 32 + "/answer", "edge/rover-02/desired"):
                with pytest.raises(PublishRefused):
                    await client.publish_checked(topic, b"{}", qos=1)
            await client.subscribe("edge/enroll/+/answer", qos=1)
            await client.subscribe("edge/+/desired", qos=1)
            await client.subscribe("edge/+/reported", qos=1)
            with pytest.raises(TimeoutError):  # rover-01's retained documents are not delivered
                async with asyncio.timeout(2):
                    async for message in client.messages:
                        raise AssertionError(f"claim certificate read {message.topic}")
        assert fleet.records()["rover-01"]["status"] == "enrolled"  # the forged request changed nothing

        # An operator approves the second device: it enrolls, under its own name.
        out = fleet.edgectl("enrollments", "approve", "rover-02")
        assert out.returncode == 0, out.stderr
        approved = second.wait_identity(lambda s: s["state"] == "valid", "rover-02 enrolled after approval")
        assert approved["subject"] == "CN=rover-02"
        listing = fleet.edgectl("enrollments")
        assert "rover-02" in listing.stdout and "enrolled" in listing.stdout
    finally:
        first.agent.stop()
        second.agent.stop()
        fleet.stop()
    _ = aiomqtt


async def test_tpm_from_a_trusted_maker_enrolls_by_its_ek_certificate_then_the_claim_is_revoked(
    tmp_path: Path, tpms: list[Swtpm]
) -> None:
    trusted = new_tpm(tmp_path, "trusted", tpms)
    fleet = Fleet(tmp_path / "fleet", trusted_makers=trusted.ca_certs).start()
    device = Device(fleet, tmp_path / "dev", "cam-07", trusted)
    try:
        device.agent.start()
        enrolled = device.wait_identity(lambda s: s["state"] == "valid", "cam-07 enrolled by its EK certificate")
        assert enrolled["subject"] == "CN=cam-07"
        record = fleet.records()["cam-07"]
        assert record["status"] == "enrolled" and "trusted TPM maker" in record["reason"]
        # A leaked claim certificate is revoked: the broker refuses it from then on.
        out = fleet.edgectl("revoke", "claim:batch-1")
        assert out.returncode == 0 and "claim:batch-1: revoked (1 certificate)" in out.stdout, out.stderr
        params = BrokerParams("127.0.0.1", fleet.broker.port, wire.new_client_id(), None, None,
                              claim_tls(fleet), 30)  # type: ignore[arg-type]

        async def refused() -> bool:
            try:
                async with make_client(params, timeout=3):
                    return False
            except aiomqtt.MqttError:
                return True

        deadline = asyncio.get_running_loop().time() + 10
        while not await refused():
            assert asyncio.get_running_loop().time() < deadline, "the revoked claim certificate still connects"
        assert device.identity()["state"] == "valid"  # enrolled devices are not affected
    finally:
        device.agent.stop()
        fleet.stop()
