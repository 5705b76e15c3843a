"""Decisions about the device certificate (pure): is an issued certificate acceptable, and what
to do now (use it, renew it, re-enroll), given the clock's state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from edge_agent.identity.clock import ClockState

Action = Literal["enroll", "use", "renew", "reenroll"]


@dataclass(frozen=True)
class CertFacts:
    subject: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertFacts:
        return cls(cert.subject.rfc4514_string(), cert.serial_number, cert.not_valid_before_utc,
                   cert.not_valid_after_utc)

    def renew_time(self, renew_at: float) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) * renew_at


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    next_check: dt.datetime | None = None  # when to look again (the renewal time)


def decide(facts: CertFacts | None, now: dt.datetime, clock: ClockState, renew_at: float) -> Decision:
    if facts is None:
        return Decision("enroll", "no device certificate yet")
    if not clock.synchronised:
        # A wrong clock proves nothing about expiry: keep the certificate and let the broker judge.
        return Decision("use", f"clock not synchronised ({clock.reason}): keeping the certificate; "
                               "renewal waits for the clock")
    if now >= facts.not_after:
        return Decision("reenroll", f"the certificate expired at {facts.not_after:%Y-%m-%dT%H:%M:%SZ}")
    due = facts.renew_time(renew_at)
    if now >= due:
        return Decision("renew", f"{renew_at:.0%} of the certificate's lifetime has passed", facts.not_after)
    return Decision("use", "valid", due)


def issued_problem(cert: x509.Certificate, device_id: str, public_key: object, ca_bundle: list[x509.Certificate]
                   ) -> str | None:
    """None when an issued certificate is for this device and key and is signed by one of the
    fleet's CAs (the bundle may hold the old and the new CA during a rotation)."""
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if not cn or cn[0].value != device_id:
        return f"the certificate is for {cert.subject.rfc4514_string()}, not CN={device_id}"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = public_key.public_bytes(serialization.Encoding.DER, spki)  # type: ignore[attr-defined]
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != mine:
        return "the certificate is not for this device's key"
    for ca in ca_bundle:
        try:
            cert.verify_directly_issued_by(ca)
            return None
        except (ValueError, TypeError, InvalidSignature):
            continue
    return f"the certificate (issuer {cert.issuer.rfc4514_string()}) is not signed by a fleet CA in the bundle"
