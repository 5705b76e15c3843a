from __future__ import annotations

import hashlib
import os

import pytest

from edge_shared.attestation import Evidence
from edgectl.attestation.bootlog import BootLogError, boot_log_problems, build_boot_log, parse_boot_log, replay_boot_log
from edgectl.attestation.verify import Expectations, verify_quote
from tests.fakes.tpm import FakeTpm

EVENTS = [
    (0, 0x80000008, hashlib.sha256(b"firmware").digest(), b"fw"),
    (4, 0x80000003, hashlib.sha256(b"bootloader").digest(), b"efi app"),
    (7, 0x800000E0, hashlib.sha256(b"secure boot").digest(), b"db"),
    (4, 0x80000003, hashlib.sha256(b"kernel").digest(), b"vmlinuz"),
]


def test_round_trip_and_replay() -> None:
    log = build_boot_log(EVENTS)
    events = parse_boot_log(log)
    assert [(e.pcr, e.sha256) for e in events] == [(p, d) for p, _, d, _ in EVENTS]
    pcr4 = hashlib.sha256(hashlib.sha256(bytes(32) + EVENTS[1][2]).digest() + EVENTS[3][2]).digest()
    assert replay_boot_log(events)[4] == pcr4


def test_startup_locality_and_no_action_events() -> None:
    log = build_boot_log([(0, 0x3, bytes(32), b"StartupLocality\x00\x03"), EVENTS[0]])
    expected = hashlib.sha256(bytes(31) + b"\x03" + EVENTS[0][2]).digest()
    assert replay_boot_log(parse_boot_log(log))[0] == expected


@pytest.mark.parametrize("log", [b"", b"\x00" * 40, build_boot_log(EVENTS)[:-3]])
def test_malformed_logs(log: bytes) -> None:
    with pytest.raises(BootLogError):
        parse_boot_log(log)


def test_verifier_replays_the_boot_log_against_quoted_pcrs() -> None:
    tpm = FakeTpm()
    for pcr, _, digest, _ in EVENTS:
        tpm.pcr_extend(pcr, digest)
    log = build_boot_log(EVENTS)
    nonce = os.urandom(32)
    raw = tpm.quote(range(8), nonce)
    expect = Expectations(nonce, tuple(range(8)), tpm.ak_public())
    ok = verify_quote(Evidence(raw.attest, raw.signature, raw.pcrs, None, [], log), expect)
    assert ok.passed and next(c for c in ok.checks if c.name == "boot_log_replay").status == "pass"
    forged = build_boot_log([*EVENTS[:3], (4, 0x80000003, hashlib.sha256(b"other kernel").digest(), b"")])
    bad = verify_quote(Evidence(raw.attest, raw.signature, raw.pcrs, None, [], forged), expect)
    assert bad.failed_names() == ["boot_log_replay"] and "PCR 4" in bad.failures[0].detail
    assert boot_log_problems(log, raw.pcrs) == []
