"""The enrollment service's handling of one request, without the network (requests without TPM
evidence here; the TPM path runs against swtpm in tests/integration/identity/)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.identity import evidence
from edge_agent.identity.keystore import FileKeys
from edge_shared import enrollment as wire
from edgectl.enrollment.ca import FleetCa, cert_pem
from edgectl.enrollment.policy import Record
from edgectl.enrollment.service import Trust, handle
from edgectl.enrollment.store import EnrollmentStore

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
NO_TRUST = Trust(frozenset(), None)


def csr(device: str, key: ec.EllipticCurvePrivateKey, cn: str | None = None) -> str:
    built = (x509.CertificateSigningRequestBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or device)]))
             .sign(key, hashes.SHA256()))
    return built.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def store(tmp_path: Path) -> EnrollmentStore:
    return EnrollmentStore(tmp_path / "enrollment.db")


def test_without_tpm_waits_then_issued_after_approval_and_renewed_with_proof(store: EnrollmentStore) -> None:
    ca = FleetCa.create()
    key = ec.generate_private_key(ec.SECP256R1())
    request = wire.EnrollRequest(kind="enroll", device_id="dev", csr=csr("dev", key))
    assert handle(request, ca, store, NO_TRUST, HOUR, NOW).status == "pending"
    store.set_status("dev", "approved", "approved by an operator", NOW)
    answer = handle(request, ca, store, NO_TRUST, HOUR, NOW)
    assert answer.status == "issued" and answer.certificate is not None and answer.sealed is None
    cert = x509.load_pem_x509_certificate(answer.certificate.encode())
    assert cert.subject.rfc4514_string() == "CN=dev" and cert.not_valid_after_utc == NOW + HOUR

    new_key = ec.generate_private_key(ec.SECP256R1())
    new_csr = csr("dev", new_key)
    new_der = x509.load_pem_x509_csr(new_csr.encode()).public_bytes(serialization.Encoding.DER)
    proof = evidence.renew_proof(key, answer.certificate.encode(), new_der)
    renewed = handle(wire.EnrollRequest(kind="renew", device_id="dev", csr=new_csr, proof=proof), ca, store,
                     NO_TRUST, HOUR, NOW + HOUR / 2)
    assert renewed.status == "issued"
    # A proof by another key, or by a revoked or expired certificate, is refused.
    stranger = evidence.renew_proof(ec.generate_private_key(ec.SECP256R1()), answer.certificate.encode(), new_der)
    forged = handle(wire.EnrollRequest(kind="renew", device_id="dev", csr=new_csr, proof=stranger), ca, store,
                    NO_TRUST, HOUR, NOW)
    assert forged.status == "refused" and "not signed by the key of the current certificate" in forged.reason
    late = handle(wire.EnrollRequest(kind="renew", device_id="dev", csr=new_csr, proof=proof), ca, store,
                  NO_TRUST, HOUR, NOW + 2 * HOUR)
    assert late.status == "refused" and "not valid now" in late.reason
    assert store.revoke("dev", NOW) == 2
    revoked = handle(wire.EnrollRequest(kind="renew", device_id="dev", csr=new_csr, proof=proof), ca, store,
                     NO_TRUST, HOUR, NOW)
    assert revoked.status == "refused" and "revoked" in revoked.reason
    assert {r.serial for r in store.revoked_certs(NOW)} == {cert.serial_number, renewed_serial(renewed)}


def renewed_serial(answer: wire.EnrollAnswer) -> int:
    assert answer.certificate is not None
    return x509.load_pem_x509_certificate(answer.certificate.encode()).serial_number


def test_bad_csrs_are_refused(store: EnrollmentStore) -> None:
    ca = FleetCa.create()
    key = ec.generate_private_key(ec.SECP256R1())
    wrong_cn = handle(wire.EnrollRequest(kind="enroll", device_id="dev", csr=csr("dev", key, cn="other")), ca,
                      store, NO_TRUST, HOUR, NOW)
    assert wrong_cn.status == "refused" and "CN=dev" in wrong_cn.reason
    garbage = handle(wire.EnrollRequest(kind="enroll", device_id="dev", csr="not a csr"), ca, store, NO_TRUST,
                     HOUR, NOW)
    assert garbage.status == "refused" and garbage.reason.startswith("csr:")
    assert store.record("dev") is None  # nothing recorded for refused requests


def test_wire_rejects_what_is_not_the_protocol() -> None:
    for raw, where in ((b"[]", "schema"), (b'{"schema": 1, "kind": "enroll"}', "device_id"),
                       (b'{"schema": 1, "kind": "steal", "device_id": "d", "csr": "x"}', "kind"),
                       (b'{"schema": 1, "kind": "enroll", "device_id": "a/b", "csr": "x"}', "device_id"),
                       (b'{"schema": 1, "kind": "enroll", "device_id": "d", "csr": "x", "extra": 1}', "extra")):
        with pytest.raises(wire.WireError, match=where):
            wire.decode_request(raw)
    request = wire.EnrollRequest(kind="enroll", device_id="d", csr="x")
    assert wire.decode_request(wire.encode(request)) == request
    cid = wire.new_client_id()
    assert wire.client_id_of("edge", wire.request_topic("edge", cid)) == cid
    assert wire.client_id_of("edge", "edge/enroll/dev-1/request") is None


async def test_file_keys_are_0600_and_promoted_atomically(tmp_path: Path) -> None:
    keys = FileKeys(tmp_path)
    key = await keys.create("next")
    assert (tmp_path / "next.key").stat().st_mode & 0o777 == 0o600
    keys.promote("next", "device")
    assert not keys.exists("next")
    loaded = await keys.load("device")
    assert loaded.private_numbers() == key.private_numbers()


def test_ca_rotation_a_certificate_of_the_previous_ca_renews_to_the_new_one(store: EnrollmentStore) -> None:
    old, new = FleetCa.create("old CA"), FleetCa.create("new CA")
    key = ec.generate_private_key(ec.SECP256R1())
    store.put("dev", Record("enrolled", None, "k"), "enrolled", NOW)
    old_cert = old.issue_device("dev", key.public_key(), HOUR, NOW)
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_csr = csr("dev", new_key)
    der = x509.load_pem_x509_csr(new_csr.encode()).public_bytes(serialization.Encoding.DER)
    request = wire.EnrollRequest(kind="renew", device_id="dev", csr=new_csr,
                                 proof=evidence.renew_proof(key, cert_pem(old_cert), der))
    refused = handle(request, new, store, NO_TRUST, HOUR, NOW)
    assert refused.status == "refused" and "not signed by the fleet CA" in refused.reason
    renewed = handle(request, new, store, NO_TRUST, HOUR, NOW, previous_cas=(old.cert,))
    assert renewed.status == "issued" and renewed.certificate is not None
    issued = x509.load_pem_x509_certificate(renewed.certificate.encode())
    issued.verify_directly_issued_by(new.cert)
