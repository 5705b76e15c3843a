"""The fleet CA: signs device certificates from CSRs, claim certificates for a batch, and the
certificate revocation list the broker checks (mosquitto `crlfile`). Keys are EC P-256.

The CA key is read from a PEM file (mode 0600, on the enrollment service's host only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates are dated a little in the past (5 minutes, a tenth of a short lifetime): a
# device whose clock is slightly behind the CA's must not see one that is "not yet valid".
BACKDATE = dt.timedelta(minutes=5)


def backdate(lifetime: dt.timedelta) -> dt.timedelta:
    return min(BACKDATE, lifetime / 10)
CLAIM_PREFIX = "claim:"  # claim certificate CNs; ':' never appears in a device id


class CaError(Exception):
    """The CA files are missing or unusable; the message names the file."""


@dataclass(frozen=True)
class Revoked:
    serial: int
    when: dt.datetime


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class FleetCa:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> FleetCa:
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise CaError(f"{cert_file}: cannot read the CA certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise CaError(f"{key_file}: cannot read the CA key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_file}: expected an EC private key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CaError(f"{key_file} is not the key of {cert_file}")
        return cls(cert, key)

    @classmethod
    def create(cls, name: str = "edge-agent fleet CA", days: int = 3650,
               now: dt.datetime | None = None) -> FleetCa:
        key = new_key()
        now = now or dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def save(self, cert_file: Path, key_file: Path) -> None:
        cert_file.write_bytes(cert_pem(self.cert))
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem(self.key))

    def _leaf(self, cn: str, public_key: ec.EllipticCurvePublicKey, not_before: dt.datetime,
              not_after: dt.datetime, usage: x509.ObjectIdentifier, sans: Iterable[x509.GeneralName] = ()
              ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        sans = list(sans)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_device(self, device_id: str, public_key: ec.EllipticCurvePublicKey, lifetime: dt.timedelta,
                     now: dt.datetime) -> x509.Certificate:
        """A client certificate whose CN is the device id (the broker's user name)."""
        return self._leaf(device_id, public_key, now - backdate(lifetime), now + lifetime,
                          ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_claim(self, batch: str, public_key: ec.EllipticCurvePublicKey, lifetime: dt.timedelta,
                    now: dt.datetime) -> x509.Certificate:
        """A claim certificate shared by a batch of devices: CN claim:BATCH, which the broker's ACL
        allows only the enrollment topics (a device id never contains ':')."""
        return self._leaf(CLAIM_PREFIX + batch, public_key, now - BACKDATE, now + lifetime,
                          ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server(self, name: str, public_key: ec.EllipticCurvePublicKey, lifetime: dt.timedelta,
                     now: dt.datetime, sans: Iterable[x509.GeneralName]) -> x509.Certificate:
        return self._leaf(name, public_key, now - BACKDATE, now + lifetime, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def crl(self, revoked: Iterable[Revoked], now: dt.datetime, valid_for: dt.timedelta) -> bytes:
        """The CRL as PEM. OpenSSL refuses every client while the broker's CRL is past its
        next-update time, so the enrollment service re-issues it well before that."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE).next_update(now + valid_for)
        )
        for item in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(item.serial).revocation_date(item.when).build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
