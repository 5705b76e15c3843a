"""sign_document (edgectl's side of desired documents): the DSSE envelope's shape, what is signed,
the gate-owned fields it writes; and the parsers of attacker-controlled bytes in trust/ failing only
with their own error types (ported from the removed test_fuzz.py)."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.desired.admission import Admitted, DocumentTrust, History, admit
from edge_shared.document import Limits
from edge_shared.spec import validate_deployment
from edge_shared.trust import cosign, keys
from edge_shared.trust.policy import Refused, ScopePolicy, check_bundle
from edgectl.documents import DOCUMENT_PAYLOAD_TYPE, envelope_signer_ids, sign_document

KEY = keys.generate_private_key()
OTHER = keys.generate_private_key()
DOC = {"schema": 1, "version": 7, "deployment": {"modules": {"pilot": {"image": "reg.local/pilot:1"}}}}
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_envelope_shape_and_signature() -> None:
    raw = sign_document(DOC, KEY, expires_in=timedelta(hours=1), now=NOW)
    env = json.loads(raw)
    assert set(env) == {"payloadType", "payload", "signatures"}
    assert env["payloadType"] == DOCUMENT_PAYLOAD_TYPE == "application/vnd.edge-agent.desired+json"
    payload = base64.b64decode(env["payload"], validate=True)
    # canonical JSON: sorted keys, no spaces, the expiry in RFC 3339 UTC
    assert payload == json.dumps({**DOC, "expires": "2030-01-02T04:04:05Z"}, separators=(",", ":"),
                                 sort_keys=True).encode()
    [sig] = env["signatures"]
    assert set(sig) == {"keyid", "sig"}
    assert sig["keyid"] == keys.key_id(KEY.public_key()) and len(sig["keyid"]) == 64
    pae = cosign.dsse_pae(DOCUMENT_PAYLOAD_TYPE, payload)
    assert keys.verify_signature(KEY.public_key(), base64.b64decode(sig["sig"]), pae)
    assert not keys.verify_signature(OTHER.public_key(), base64.b64decode(sig["sig"]), pae)
    assert envelope_signer_ids(raw) == [keys.key_id(KEY.public_key())]


def test_expiry_and_rotation_fields() -> None:
    body = json.loads(base64.b64decode(json.loads(sign_document(DOC, KEY, expires_in=None))["payload"]))
    assert body == DOC  # no expiry asked for: none written
    new_pem = keys.public_key_pem(OTHER.public_key())
    body = json.loads(base64.b64decode(json.loads(sign_document(DOC, KEY, rotate_to=[new_pem]))["payload"]))
    assert body["trust"] == {"documentKeys": [new_pem.decode()]}
    expires = datetime.strptime(body["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)  # the default


def test_the_device_gate_admits_what_edgectl_signs() -> None:
    trusted = keys.parse_public_key(keys.public_key_pem(KEY.public_key()), "test")
    decision = admit(sign_document(DOC, KEY), limits=Limits(), trust=DocumentTrust("enforce", (trusted,)),
                     history=History(), now=datetime.now(UTC).timestamp(), validate=validate_deployment)
    assert isinstance(decision, Admitted) and decision.version == 7 and decision.signer == trusted.short_id


def test_envelope_signer_ids_of_garbage() -> None:
    assert envelope_signer_ids(b"not json") == []
    assert envelope_signer_ids(json.dumps(DOC).encode()) == []


# --------------------------------------------------------------------------- parsers never crash

PUBLIC = keys.parse_public_key(keys.public_key_pem(KEY.public_key()), "k")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
blobs = st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())


@settings(max_examples=300)
@given(blobs)
def test_strict_parsers_raise_only_format_errors(data: bytes) -> None:
    for parse in (
        cosign.parse_simplesigning_payload,
        cosign.parse_statement,
        cosign.parse_bundle,
        cosign.parse_referrers_index,
        cosign.parse_legacy_signature_manifest,
    ):
        with contextlib.suppress(cosign.FormatError):
            parse(data)


@settings(max_examples=300)
@given(blobs)
def test_bundle_check_never_accepts_garbage(data: bytes) -> None:
    assert isinstance(
        check_bundle(data, ScopePolicy("*", "enforce", (PUBLIC,)), "r.example/a", "sha256:" + "a" * 64), Refused
    )


@given(st.text(max_size=40))
def test_private_key_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(keys.KeyFileError):
        keys.decrypt_private_key(text.encode(), b"pw")


# A non-ASCII character in a base64 field is a FormatError like any other bad base64 (the plain
# ValueError base64.b64decode raises for it must not escape the parsers).
def test_b64decode_strict_refuses_non_ascii_with_a_format_error() -> None:
    with contextlib.suppress(cosign.FormatError):
        cosign.b64decode_strict("\u00e9AAA", "payload")
        raise AssertionError("non-ASCII base64 decoded")
