"""The firmware's TPM boot event log (TCG PC Client "crypto agile" format): parse and replay the
SHA-256 digests into PCRs 0-7 (pure functions).

Written by hand: the format is small and fixed, and the Python libraries that parse it are
either part of larger tools (Keylime, tpm2-tools' C parser) or unmaintained. Layout, all
little-endian: a first TCG_PCR_EVENT in the SHA-1 format whose data is the "Spec ID Event03"
structure listing the digest sizes, then TCG_PCR_EVENT2 records (PCR index, event type,
TPML_DIGEST_VALUES, event size, event data). EV_NO_ACTION events are not extended, except that
a "StartupLocality" event sets PCR 0's initial value to the locality.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from edge_shared.attestation import ZERO_PCR

EV_NO_ACTION = 0x3
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
TPM_ALG_SHA256 = 0x000B
BOOT_PCRS = tuple(range(8))


class BootLogError(ValueError):
    """The boot event log is malformed; the message says where."""


@dataclass(frozen=True)
class BootEvent:
    pcr: int
    event_type: int
    sha256: bytes | None
    data: bytes


def parse_boot_log(log: bytes) -> list[BootEvent]:
    try:
        return _parse(log)
    except struct.error:
        raise BootLogError("boot event log is truncated") from None


def _parse(log: bytes) -> list[BootEvent]:
    pcr, event_type = struct.unpack_from("<II", log, 0)
    offset = 8 + 20
    (size,) = struct.unpack_from("<I", log, offset)
    offset += 4
    spec = log[offset : offset + size]
    offset += size
    if event_type != EV_NO_ACTION or not spec.startswith(SPEC_ID_SIGNATURE):
        raise BootLogError("boot event log is not in the crypto-agile format (no Spec ID Event03 header)")
    (count,) = struct.unpack_from("<I", spec, 24)
    sizes: dict[int, int] = {}
    for i in range(count):
        alg, digest_size = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = digest_size
    events = []
    while offset < len(log):
        start = offset
        pcr, event_type, digests = struct.unpack_from("<III", log, offset)
        offset += 12
        sha256 = None
        for _ in range(digests):
            (alg,) = struct.unpack_from("<H", log, offset)
            offset += 2
            if alg not in sizes:
                raise BootLogError(f"boot event at byte {start}: digest algorithm {alg:#06x} not in the header")
            digest = log[offset : offset + sizes[alg]]
            if len(digest) != sizes[alg]:
                raise BootLogError("boot event log is truncated")
            offset += sizes[alg]
            if alg == TPM_ALG_SHA256:
                sha256 = digest
        (size,) = struct.unpack_from("<I", log, offset)
        offset += 4
        data = log[offset : offset + size]
        if len(data) != size:
            raise BootLogError("boot event log is truncated")
        offset += size
        events.append(BootEvent(pcr, event_type, sha256, data))
    return events


def replay_boot_log(events: list[BootEvent]) -> dict[int, bytes]:
    """PCR values (SHA-256 bank) that the events produce; only PCRs that events touch."""
    values: dict[int, bytes] = {}
    for event in events:
        if event.event_type == EV_NO_ACTION:
            if event.pcr == 0 and event.data.startswith(b"StartupLocality\x00") and len(event.data) >= 17:
                values[0] = bytes(31) + event.data[16:17]
            continue
        if event.sha256 is None:
            raise BootLogError(f"boot event for PCR {event.pcr} has no SHA-256 digest")
        values[event.pcr] = hashlib.sha256(values.get(event.pcr, ZERO_PCR) + event.sha256).digest()
    return values


def boot_log_problems(log: bytes, quoted: Mapping[int, bytes], pcrs: tuple[int, ...] = BOOT_PCRS) -> list[str]:
    """Compare the replayed log with the quoted PCRs among `pcrs`."""
    replayed = replay_boot_log(parse_boot_log(log))
    problems = []
    for index in pcrs:
        if index not in quoted:
            continue
        expected = replayed.get(index, ZERO_PCR)
        if expected != quoted[index]:
            problems.append(
                f"PCR {index}: log replays to {expected.hex()[:16]}..., quoted {quoted[index].hex()[:16]}..."
            )
    return problems


def build_boot_log(events: list[tuple[int, int, bytes, bytes]]) -> bytes:
    """A crypto-agile log with SHA-256 digests only: (pcr, event type, digest, data) per event.
    For tests and tools."""
    spec = SPEC_ID_SIGNATURE + struct.pack("<IBBBB", 0, 0, 2, 0, 2) + struct.pack("<I", 1)
    spec += struct.pack("<HH", TPM_ALG_SHA256, 32) + b"\x00"
    out = struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for pcr, event_type, digest, data in events:
        out += struct.pack("<III", pcr, event_type, 1) + struct.pack("<H", TPM_ALG_SHA256) + digest
        out += struct.pack("<I", len(data)) + data
    return out
