"""Recovery and revocation: a device whose certificate expired while it was stopped enrolls again
on start by itself (its TPM matches its enrollment record); `edgectl revoke` cuts a device off at
the broker (CRL and ACL, reloaded) within seconds, and its re-enrollment waits for an operator."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509

from devinfra.procs import wait_until
from devinfra.swtpm import Swtpm
from edge_shared.mqtt_client import PublishRefused, make_client
from edge_shared.mqtt_params import BrokerParams
from tests.integration.identity.fleet_env import Device, Fleet

CERT_S = 15


def serial(device: Device) -> int:
    return x509.load_pem_x509_certificate((device.identity_dir / "device.crt").read_bytes()).serial_number


def test_certificate_expired_while_stopped_reenrolls_on_start_without_anyone(tmp_path: Path) -> None:
    tpm = Swtpm(tmp_path / "tpm").manufacture().start()
    fleet = Fleet(tmp_path / "fleet", cert_lifetime_s=CERT_S, trusted_makers=tpm.ca_certs).start()
    device = Device(fleet, tmp_path / "dev", "pump-03", tpm)
    try:
        device.agent.start()
        device.wait_identity(lambda s: s["state"] == "valid", "enrolled")
        device.agent.stop()
        cert = x509.load_pem_x509_certificate((device.identity_dir / "device.crt").read_bytes())
        wait_until(lambda: dt.datetime.now(dt.UTC) > cert.not_valid_after_utc, CERT_S * 3,
                   "the certificate to expire while the device is off")
        device.agent.start()
        back = device.wait_identity(lambda s: s["state"] == "valid" and s.get("serial") != f"{cert.serial_number:x}",
                                    "re-enrolled after expiry")
        log = device.agent.log()
        assert "the certificate expired at" in log and "EVENT=identity.enrolled" in log
        assert dt.datetime.fromisoformat(back["notAfter"]) > dt.datetime.now(dt.UTC)
        record = fleet.records()["pump-03"]
        assert record["status"] == "enrolled" and record["reason"] in (
            "re-enrollment by the enrolled TPM", "renewal proven by the current certificate")
        assert record["issued"] >= 2
    finally:
        device.agent.stop()
        fleet.stop()
        tpm.stop()


async def test_revoked_device_is_refused_by_the_broker_within_seconds_and_cannot_reenroll(tmp_path: Path) -> None:
    tpm = Swtpm(tmp_path / "tpm").manufacture().start()
    fleet = Fleet(tmp_path / "fleet", trusted_makers=tpm.ca_certs).start()
    # A key file (not sealed), so that this test can connect as the device itself.
    device = Device(fleet, tmp_path / "dev", "gate-09", tpm, identity={"key_storage": "file"})
    try:
        device.agent.start()
        device.wait_identity(lambda s: s["state"] == "valid", "enrolled")
        ctx = ssl.create_default_context(cafile=str(fleet.ca_cert))
        ctx.load_cert_chain(str(device.identity_dir / "device.crt"), str(device.identity_dir / "device.key"))

        def params(client_id: str) -> BrokerParams:
            return BrokerParams("127.0.0.1", fleet.broker.port, client_id, None, None, ctx, 30)

        async with make_client(params("gate-09-probe")) as open_session:
            await open_session.publish_checked("edge/gate-09/telemetry/x", b"{}", qos=1)  # allowed before
            revoked_at = time.monotonic()
            out = fleet.edgectl("revoke", "gate-09")
            assert out.returncode == 0 and "gate-09: revoked (1 certificate)" in out.stdout, out.stderr

            # The open session: every publish refused (ACL deny), measured from the command.
            acl_s = None
            while time.monotonic() - revoked_at < 10:
                try:
                    await open_session.publish_checked("edge/gate-09/telemetry/x", b"{}", qos=1)
                except PublishRefused:
                    acl_s = time.monotonic() - revoked_at
                    break
            assert acl_s is not None, "the open session could still publish 10 s after the revocation"
        # A new connection: refused in the TLS handshake (CRL).
        tls_s = None
        while time.monotonic() - revoked_at < 10:
            try:
                async with make_client(params(f"gate-09-new-{time.monotonic_ns()}"), timeout=2):
                    pass
            except aiomqtt.MqttError:
                tls_s = time.monotonic() - revoked_at
                break
        assert tls_s is not None, "a new connection with the revoked certificate was accepted 10 s later"
        # (the client sees the TLS alert "certificate revoked"; mosquitto logs the verify failure)
        assert "certificate verify failed" in (fleet.broker.workdir / "mosquitto.log").read_text()
        print(f"\nrevocation: publishes refused after {acl_s:.2f} s, new connections after {tls_s:.2f} s")

        # The agent sees the broker refuse its certificate and asks to enroll again, with its TPM
        # and the claim certificate: held, since it was revoked...
        revoked_serial = serial(device)
        waiting = device.wait_identity(lambda s: s["state"] == "pending", "re-enrollment held")
        assert "revoked" in waiting["detail"]
        assert "EVENT=identity.refused_by_broker" in device.agent.log()
        assert fleet.records()["gate-09"]["status"] == "revoked"
        assert serial(device) == revoked_serial
        # ...until an operator approves it again.
        assert fleet.edgectl("enrollments", "approve", "gate-09").returncode == 0
        device.wait_identity(lambda s: s["state"] == "valid", "enrolled again after approval")
        assert serial(device) != revoked_serial
        await fleet.reported("gate-09", lambda d: (d.get("identity") or {}).get("serial") == f"{serial(device):x}",
                             "reporting again with the new certificate")
    finally:
        device.agent.stop()
        fleet.stop()
        tpm.stop()


_ = pytest
