"""Parsers of attacker-controlled bytes fail only with their own error types, never crash."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.trust import cosign, keys
from edge_agent.trust.documents import open_signed_document
from edge_agent.trust.policy import Refused, ScopePolicy, check_bundle
from edge_agent.twin.events import DesiredRejected

KEY = keys.parse_public_key(keys.public_key_pem(keys.generate_private_key().public_key()), "k")
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
        check_bundle(data, ScopePolicy("*", "enforce", (KEY,)), "r.example/a", "sha256:" + "a" * 64), Refused
    )


@settings(max_examples=300)
@given(blobs)
def test_document_gate_raises_only_desired_rejected(data: bytes) -> None:
    try:
        open_signed_document(data, [KEY])
    except DesiredRejected:
        return
    raise AssertionError("garbage accepted")


@given(st.text(max_size=40))
def test_private_key_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(keys.KeyFileError):
        keys.decrypt_private_key(text.encode(), b"pw")
