"""Attestation formats both sides read: the PCR bank, an AK's TPM name, the device identity and
quote evidence on the wire, and the image-measurement log (PCR 23) the verifier replays.
Pure Python (hashlib, base64): the fleet side does not load the TPM library for these."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BANK = "sha256"
DIGEST_SIZE = 32
ZERO_PCR = bytes(DIGEST_SIZE)
DEFAULT_PCRS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 10, 23)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"{name}: not valid base64") from None


def decode_evidence(response: Mapping[str, Any]) -> Evidence:
    """Fleet side: the device's answer as verifier evidence. Raises ValueError naming the field."""
    quote = response.get("quote")
    if not isinstance(quote, dict):
        raise ValueError("quote: expected an object")
    if quote.get("bank") != BANK:
        raise ValueError(f"quote.bank: got {quote.get('bank')!r}; expected {BANK}")
    raw_pcrs = quote.get("pcrs")
    if not isinstance(raw_pcrs, dict):
        raise ValueError("quote.pcrs: expected an object of index -> hex")
    pcrs: dict[int, bytes] = {}
    for key, value in raw_pcrs.items():
        try:
            index, digest = int(key), bytes.fromhex(value)
        except (TypeError, ValueError):
            raise ValueError(f"quote.pcrs.{key}: expected a PCR index and a hex digest") from None
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"quote.pcrs.{key}: {len(digest)} bytes; expected {DIGEST_SIZE}")
        pcrs[index] = digest
    ima = response.get("ima_log")
    if ima is not None and not isinstance(ima, str):
        raise ValueError("ima_log: expected text or null")
    image_log = response.get("image_log")
    if image_log is not None and (not isinstance(image_log, list) or not all(isinstance(e, dict) for e in image_log)):
        raise ValueError("image_log: expected a list of event objects")
    boot = response.get("boot_log")
    return Evidence(
        boot_log=unb64(boot, "boot_log") if boot is not None else None,
        attest=unb64(quote.get("attest"), "quote.attest"),
        signature=unb64(quote.get("signature"), "quote.signature"),
        pcrs=pcrs,
        ima_log=ima,
        image_log=image_log,
    )


@dataclass(frozen=True)
class Evidence:
    attest: bytes
    signature: bytes
    pcrs: Mapping[int, bytes]
    ima_log: str | None = None
    image_log: Sequence[Mapping[str, Any]] | None = None
    boot_log: bytes | None = None


# TPM_ALG_ID of the name hash -> hashlib name (TPM 2.0 Part 2, table 9).
NAME_ALGS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


def ak_name(ak_public: bytes) -> bytes:
    """The TPM name of a key from its marshalled TPM2B_PUBLIC: nameAlg (2 bytes, big endian) ||
    nameAlg-hash of the TPMT_PUBLIC inside. Computed with hashlib rather than tpm2-pytss so the
    agent process does not load the TSS for it. Raises ValueError when the structure is not one."""
    if len(ak_public) < 2 + 4:
        raise ValueError(f"AK public key: {len(ak_public)} bytes is too short for a TPM2B_PUBLIC")
    size = int.from_bytes(ak_public[:2], "big")
    if size != len(ak_public) - 2:
        raise ValueError(f"AK public key: TPM2B_PUBLIC says {size} bytes, {len(ak_public) - 2} follow")
    area = ak_public[2:]
    name_alg = int.from_bytes(area[2:4], "big")
    algorithm = NAME_ALGS.get(name_alg)
    if algorithm is None:
        raise ValueError(f"AK public key: unsupported name algorithm {name_alg:#06x}")
    return name_alg.to_bytes(2, "big") + hashlib.new(algorithm, area).digest()


@dataclass(frozen=True)
class DeviceIdentity:
    ek_public: bytes
    ek_cert: bytes | None
    ek_type: str
    ak_public: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "ek_public": b64(self.ek_public),
            "ek_cert": b64(self.ek_cert) if self.ek_cert else None,
            "ek_type": self.ek_type,
            "ak_public": b64(self.ak_public),
            "ak_name": ak_name(self.ak_public).hex(),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DeviceIdentity:
        cert = data.get("ek_cert")
        return cls(
            ek_public=unb64(data.get("ek_public"), "ek_public"),
            ek_cert=unb64(cert, "ek_cert") if cert is not None else None,
            ek_type=str(data.get("ek_type", "")),
            ak_public=unb64(data.get("ak_public"), "ak_public"),
        )


EVENT_KEYS = ("seq", "module", "digest", "deployment", "time")


def canonical_event(event: Mapping[str, Any]) -> bytes:
    unknown = set(event) - set(EVENT_KEYS)
    if unknown:
        raise ValueError(f"image event has unknown fields: {', '.join(sorted(unknown))}")
    return json.dumps(dict(event), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_digest(event: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical_event(event)).digest()


def replay_image_log(events: Iterable[Mapping[str, Any]]) -> bytes:
    value = ZERO_PCR
    for event in events:
        value = hashlib.sha256(value + event_digest(event)).digest()
    return value
