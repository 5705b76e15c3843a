"""The fleet's enrollment service (`edgectl enroll-service`): a long-running MQTT client that
answers enrollment and renewal requests (edge_shared/enrollment.py).

For each request: check the CSR (signed by its key, CN = the device id, EC P-256), the TPM
evidence (the AK's quote carries the CSR's digest; the EK is named by its hash and trusted when
listed in the allowlist or certified by a trusted TPM maker), and for a renewal the proof by the
current certificate (signed by the fleet CA, for this device, not expired, not revoked). The
pure policy (policy.py) decides; an issued certificate is sealed to the requesting TPM.
Requests are answered on the requester's own answer topic only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_shared import enrollment as wire
from edge_shared.attestation import unb64
from edge_shared.mqtt_client import make_client
from edge_shared.mqtt_params import broker_params
from edgectl.enrollment import evidence
from edgectl.enrollment.broker import publish_revocations
from edgectl.enrollment.ca import FleetCa
from edgectl.enrollment.config import ServiceConfig
from edgectl.enrollment.logs import get_logger
from edgectl.enrollment.policy import Facts, decide
from edgectl.enrollment.store import EnrollmentStore

log = get_logger(__name__)
RECONNECT_S = 2.0
CRL_RETRY_S = 10.0


@dataclass(frozen=True)
class Trust:
    allowlist: frozenset[str]
    maker_cas: bytes | None

    @classmethod
    def load(cls, allowlist: Path | None, maker_cas: Path | None) -> Trust:
        hashes: set[str] = set()
        if allowlist is not None and allowlist.exists():
            for line in allowlist.read_text().splitlines():
                text = line.split("#", 1)[0].strip().lower()
                if text:
                    hashes.add(text)
        return cls(frozenset(hashes), maker_cas.read_bytes() if maker_cas is not None else None)


def handle(request: wire.EnrollRequest, ca: FleetCa, store: EnrollmentStore, trust: Trust,
           lifetime: dt.timedelta, now: dt.datetime, previous_cas: tuple[x509.Certificate, ...] = ()
           ) -> wire.EnrollAnswer:
    """One request, start to end (no network): the answer to send. `previous_cas`: retired
    fleet CAs whose certificates still prove a renewal (a CA rotation in progress)."""

    def answer(status: str, reason: str, **extra: object) -> wire.EnrollAnswer:
        return wire.EnrollAnswer(device_id=request.device_id, status=status, reason=reason,  # type: ignore[arg-type]
                                 **extra)  # type: ignore[arg-type]

    try:
        csr = x509.load_pem_x509_csr(request.csr.encode())
    except ValueError as exc:
        return answer("refused", f"csr: not a PEM CSR ({exc})")
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    key = csr.public_key()
    problem = _csr_problem(csr, key, request.device_id)
    ek_hash = None
    trusted_by = None
    if request.tpm is not None and problem is None:
        try:
            ek_hash = evidence.ek_hash(unb64(request.tpm.ek_public, "tpm.ek_public"))
        except Exception as exc:
            problem = f"tpm.ek_public: not a TPM public key ({exc})"
        problem = problem or evidence.quote_problem(request.tpm, csr_der)
        if problem is None:
            trusted_by = _ek_trust(request.tpm, ek_hash or "", trust)
    renew_problem = None
    if request.kind == "renew":
        renew_problem = _renew_problem(request, csr_der, (ca.cert, *previous_cas), store, now)
    facts = Facts(request.kind, request.device_id, ek_hash, evidence.spki_sha256(key), problem, trusted_by,
                  renew_problem)
    decision = decide(facts, store.record(request.device_id))
    if decision.record is not None:
        store.put(request.device_id, decision.record, decision.reason, now)
    elif decision.verdict != "refuse":
        store.set_reason(request.device_id, decision.reason)
    log.info("%s request for %s: %s (%s)", request.kind, request.device_id, decision.verdict, decision.reason,
             extra={"EVENT": f"enrollment.{decision.verdict}", "DEVICE": request.device_id})
    if decision.verdict == "pending":
        return answer("pending", decision.reason)
    if decision.verdict == "refuse":
        return answer("refused", decision.reason)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    cert = ca.issue_device(request.device_id, key, lifetime, now)
    store.issued(request.device_id, cert.serial_number, cert.not_valid_after_utc)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if request.tpm is not None:
        return answer("issued", decision.reason, sealed=evidence.seal_certificate(request.tpm, pem))
    return answer("issued", decision.reason, certificate=pem.decode("ascii"))


def _csr_problem(csr: x509.CertificateSigningRequest, key: object, device_id: str) -> str | None:
    if not csr.is_signature_valid:
        return "csr: its signature does not verify"
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return "csr: expected an EC P-256 key"
    cn = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if len(cn) != 1 or cn[0].value != device_id:
        return f"csr: its subject must be CN={device_id}"
    return None


def _ek_trust(tpm: wire.TpmEvidence, ek_hash: str, trust: Trust) -> str | None:
    from edge_shared.attestation import DeviceIdentity
    from edgectl.attestation.challenge import ek_certificate_problem

    if ek_hash in trust.allowlist:
        return "the EK allowlist"
    if trust.maker_cas is not None and tpm.ek_cert is not None:
        identity = DeviceIdentity(unb64(tpm.ek_public, "ek_public"), unb64(tpm.ek_cert, "ek_cert"),
                                  tpm.ek_type, unb64(tpm.ak_public, "ak_public"))
        if ek_certificate_problem(identity, trust.maker_cas) is None:
            return "an EK certificate from a trusted TPM maker"
    return None


def _renew_problem(request: wire.EnrollRequest, csr_der: bytes, cas: tuple[x509.Certificate, ...],
                   store: EnrollmentStore, now: dt.datetime) -> str | None:
    if request.proof is None:
        return "a renewal needs a proof signed by the current key"
    cert, problem = evidence.renew_proof_problem(request.proof, csr_der)
    if problem or cert is None:
        return problem
    if not any(_issued_by(cert, ca) for ca in cas):
        return "the current certificate is not signed by the fleet CA (nor a previous one)"
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if not cn or cn[0].value != request.device_id:
        return f"the current certificate is not for {request.device_id}"
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return "the current certificate is not valid now (expired devices enroll again with their claim certificate)"
    if store.is_revoked(cert.serial_number):
        return "the current certificate is revoked"
    return None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class EnrollmentService:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.section = config.enrollment
        self.ca = FleetCa.load(self.section.ca_cert, self.section.ca_key)
        self.store = EnrollmentStore(self.section.database)
        self.lifetime = dt.timedelta(seconds=self.section.cert_lifetime_s)
        self.prefix = config.mqtt.topic_prefix
        previous = self.section.previous_cas
        self.previous_cas = tuple(x509.load_pem_x509_certificates(previous.read_bytes())) if previous else ()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._refresh_crl())
            tg.create_task(self._serve_forever())

    async def _refresh_crl(self) -> None:
        """A CRL past its next-update time makes the broker refuse every client: re-issue it at a
        quarter of its validity."""
        while True:
            try:
                for line in publish_revocations(self.section, self.ca, self.store, dt.datetime.now(dt.UTC)):
                    log.debug("%s", line)
            except (OSError, ValueError) as exc:
                log.error("cannot publish the CRL/ACL for the broker: %s; trying again in %.0f s", exc, CRL_RETRY_S,
                          extra={"EVENT": "enrollment.crl_failed"})
                await asyncio.sleep(CRL_RETRY_S)
                continue
            await asyncio.sleep(self.section.crl_valid_s / 4)

    async def _serve_forever(self) -> None:
        params = broker_params(self.config.mqtt, self.config.mqtt.client_id or "enrollment-service")
        while True:
            try:
                async with make_client(params, persistent=False) as client:
                    await client.subscribe(wire.request_filter(self.prefix), qos=1)
                    log.info("enrollment service listening on %s", wire.request_filter(self.prefix),
                             extra={"EVENT": "enrollment.listening"})
                    async for message in client.messages:
                        await self._serve(client, str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("broker connection: %s; reconnecting", exc, extra={"EVENT": "enrollment.disconnected"})
                await asyncio.sleep(RECONNECT_S)

    async def _serve(self, client: aiomqtt.Client, topic: str, payload: object) -> None:
        client_id = wire.client_id_of(self.prefix, topic)
        if client_id is None or not isinstance(payload, bytes | bytearray):
            return
        try:
            request = wire.decode_request(bytes(payload))
        except wire.WireError as exc:
            log.warning("malformed enrollment request on %s: %s", topic, exc, extra={"EVENT": "enrollment.malformed"})
            return
        trust = Trust.load(self.section.ek_allowlist, self.section.tpm_maker_cas)
        answer = handle(request, self.ca, self.store, trust, self.lifetime, dt.datetime.now(dt.UTC),
                        self.previous_cas)
        await client.publish(wire.answer_topic(self.prefix, client_id), wire.encode(answer), qos=1)
