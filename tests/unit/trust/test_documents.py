"""Signed desired documents: unsigned, wrong key, altered, replayed, expired, rotated key."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.store import open_state_db
from edge_agent.trust import keys
from edge_agent.trust.documents import DOCUMENT_PAYLOAD_TYPE, DocumentGate, open_signed_document, sign_document
from edge_agent.twin.events import DesiredRejected

OLD = keys.generate_private_key()
NEW = keys.generate_private_key()
EVIL = keys.generate_private_key()


def trusted(priv: keys.PrivateKey) -> keys.TrustedKey:
    return keys.parse_public_key(keys.public_key_pem(priv.public_key()), "test")


def doc(version: int, **extra: object) -> dict[str, object]:
    return {"version": version, "deployment": {"modules": {"pilot": {"image": "reg.local/pilot:1"}}}, **extra}


def rejected(fn, *args, **kwargs) -> DesiredRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(DesiredRejected) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture
def gate(tmp_path: Path) -> DocumentGate:
    return DocumentGate(open_state_db(tmp_path), [trusted(OLD)])


def test_signed_document_opens_and_gate_fields_are_removed(gate: DocumentGate) -> None:
    payload = json.loads(gate(sign_document(doc(1), OLD)))
    assert payload == doc(1)  # no "expires"/"trust" left for the twin


def test_unsigned_document_is_refused(gate: DocumentGate) -> None:
    err = rejected(gate, json.dumps(doc(1)).encode())
    assert err.code == "unsigned" and "edgectl" in err.description


def test_wrong_key_is_refused(gate: DocumentGate) -> None:
    err = rejected(gate, sign_document(doc(1), EVIL))
    assert err.code == "untrusted_key" and trusted(EVIL).key_id[:16] in err.description


def test_altered_payload_is_a_bad_signature(gate: DocumentGate) -> None:
    env = json.loads(sign_document(doc(1), OLD))
    body = json.loads(base64.b64decode(env["payload"]))
    body["deployment"]["modules"]["pilot"]["image"] = "evil.example/miner:1"
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    err = rejected(gate, json.dumps(env).encode())
    assert err.code == "bad_signature"


def test_payload_type_is_bound_by_the_signature(gate: DocumentGate) -> None:
    env = json.loads(sign_document(doc(1), OLD))
    env["payloadType"] = "application/vnd.in-toto+json"
    assert rejected(gate, json.dumps(env).encode()).code == "bad_signature"
    assert DOCUMENT_PAYLOAD_TYPE in rejected(gate, json.dumps(env).encode()).description


def test_expired_document_is_refused() -> None:
    signed = sign_document(doc(1), OLD, expires_in=timedelta(minutes=5), now=datetime.now(UTC) - timedelta(hours=1))
    err = rejected(open_signed_document, signed, [trusted(OLD)])
    assert err.code == "expired"
    fresh = sign_document(doc(1), OLD, expires_in=timedelta(minutes=5))
    assert open_signed_document(fresh, [trusted(OLD)]).expires is not None


def test_missing_expiry_only_refused_when_required() -> None:
    signed = sign_document(doc(1), OLD, expires_in=None)
    assert open_signed_document(signed, [trusted(OLD)]).expires is None
    assert rejected(open_signed_document, signed, [trusted(OLD)], require_expires=True).code == "expired"


def test_replayed_document_is_refused_when_the_gate_knows_the_accepted_version(tmp_path: Path) -> None:
    accepted = {"v": 5}
    gate = DocumentGate(open_state_db(tmp_path), [trusted(OLD)], last_accepted_version=lambda: accepted["v"])
    assert rejected(gate, sign_document(doc(5), OLD)).code == "replayed"
    assert rejected(gate, sign_document(doc(4), OLD)).code == "replayed"
    assert json.loads(gate(sign_document(doc(6), OLD)))["version"] == 6


def test_key_rotation_introduced_by_the_old_key(tmp_path: Path, gate: DocumentGate) -> None:
    new_pem = keys.public_key_pem(NEW.public_key())
    # v2 signed by OLD introduces NEW and retires OLD
    gate(sign_document(doc(2), OLD, rotate_to=[new_pem]))
    assert [k.key_id for k in gate.trusted_keys()] == [trusted(NEW).key_id]
    assert json.loads(gate(sign_document(doc(3), NEW)))["version"] == 3
    assert rejected(gate, sign_document(doc(4), OLD)).code == "untrusted_key"
    # persisted: a restarted agent (new gate on the same state.db) keeps the rotated set
    again = DocumentGate(open_state_db(tmp_path), [trusted(OLD)])
    assert [k.key_id for k in again.trusted_keys()] == [trusted(NEW).key_id]


def test_rotation_by_an_untrusted_key_does_nothing(gate: DocumentGate) -> None:
    evil_pem = keys.public_key_pem(EVIL.public_key())
    assert rejected(gate, sign_document(doc(2), EVIL, rotate_to=[evil_pem])).code == "untrusted_key"
    assert [k.key_id for k in gate.trusted_keys()] == [trusted(OLD).key_id]


def test_replayed_rotation_is_not_reapplied(gate: DocumentGate) -> None:
    old_pem, new_pem = keys.public_key_pem(OLD.public_key()), keys.public_key_pem(NEW.public_key())
    v3_keep_both = sign_document(doc(3), OLD, rotate_to=[old_pem, new_pem])
    gate(v3_keep_both)
    gate(sign_document(doc(4), NEW, rotate_to=[new_pem]))  # retire OLD
    assert rejected(gate, v3_keep_both).code == "untrusted_key"
    v2_by_new = sign_document(doc(2), NEW, rotate_to=[new_pem, old_pem])  # older version, re-adds OLD
    gate(v2_by_new)  # passes the signature gate (the twin refuses it as a replay) ...
    assert [k.key_id for k in gate.trusted_keys()] == [trusted(NEW).key_id]  # ... but does not rotate


def test_editing_config_keys_on_the_device_resets_rotation(tmp_path: Path) -> None:
    db = open_state_db(tmp_path)
    gate = DocumentGate(db, [trusted(OLD)])
    gate(sign_document(doc(2), OLD, rotate_to=[keys.public_key_pem(NEW.public_key())]))
    reprovisioned = DocumentGate(db, [trusted(EVIL)])  # operator with root on the device wins
    assert [k.key_id for k in reprovisioned.trusted_keys()] == [trusted(EVIL).key_id]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "invalid_json"),
        (b'{"payloadType":"x","signatures":[]}', "bad_signature"),
        (
            b'{"payloadType":"%s","payload":"!!","signatures":[{"sig":"AA=="}]}' % DOCUMENT_PAYLOAD_TYPE.encode(),
            "bad_signature",
        ),
    ],
)
def test_malformed_envelopes(gate: DocumentGate, raw: bytes, code: str) -> None:
    assert rejected(gate, raw).code == code


def test_invalid_rotation_is_refused(gate: DocumentGate) -> None:
    body = doc(2, trust={"documentKeys": ["not a key"]})
    env = sign_document(body, OLD)
    assert rejected(gate, env).code == "invalid_trust"


def test_gate_off_passes_through(tmp_path: Path) -> None:
    gate = DocumentGate(open_state_db(tmp_path), [], mode="off")
    raw = json.dumps(doc(1)).encode()
    assert gate(raw) == raw
