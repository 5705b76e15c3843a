"""The strict desired-document parser: hostile inputs and a hypothesis fuzz."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.twin.document import (
    Limits,
    default_deployment_validator,
    evaluate,
    nesting_depth,
    parse_desired,
    peek_version,
    version_verdict,
)
from edge_agent.twin.events import DesiredRejected

GOOD: dict[str, Any] = {"schema": 1, "version": 3, "deployment": {"modules": {"a": {"image": "x"}}}}


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def rejected(raw: bytes, **kwargs: Any) -> DesiredRejected:
    with pytest.raises(DesiredRejected) as info:
        evaluate(
            raw, last_version=kwargs.pop("last_version", None), last_digest=kwargs.pop("last_digest", None), **kwargs
        )
    return info.value


def test_good_document_parses() -> None:
    doc = parse_desired(enc({**GOOD, "properties": {"a": {"k": 1}}}))
    assert doc.version == 3 and doc.deployment == GOOD["deployment"] and doc.properties == {"a": {"k": 1}}
    assert len(doc.digest) == 64


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"not json", "invalid_json", "line 1 column 1"),
        (b"", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_document", "expected a JSON object, got list"),
        (b'"str"', "invalid_document", "got str"),
        (enc({"version": 1, "deployment": {}}), "invalid_document", "schema: field required"),
        (enc({**GOOD, "schema": 2}), "unsupported_schema", "schema: got 2"),
        (enc({**GOOD, "schema": "1"}), "unsupported_schema", 'got "1"'),
        (enc({**GOOD, "schema": True}), "unsupported_schema", "got true"),
        (enc({**GOOD, "version": "3"}), "invalid_document", "version: should be a valid integer"),
        (enc({**GOOD, "version": 3.0}), "invalid_document", "version"),
        (enc({**GOOD, "version": True}), "invalid_document", "version"),
        (enc({**GOOD, "version": 0}), "invalid_document", "version: should be greater than or equal to 1"),
        (enc({**GOOD, "version": 2**60}), "invalid_document", "version"),
        (enc({**GOOD, "deployment": []}), "invalid_document", "deployment: should be a valid dictionary"),
        (enc({**GOOD, "properties": {"a": 1}}), "invalid_document", "properties.a"),
        (enc({**GOOD, "extra": 1}), "invalid_document", "extra: unknown field"),
        (b'{"schema":1,"schema":1,"version":1,"deployment":{}}', "invalid_json", "duplicate key 'schema'"),
        (b'{"schema":1,"version":1,"deployment":{"x":NaN}}', "invalid_json", "NaN"),
        (b'{"schema":1,"version":1,"deployment":{"x":1e999}}', "invalid_json", "out of range"),
        (b'{"schema":1,"version":1,"deployment":{"x":' + b"9" * 5000 + b"}}", "invalid_json", "not valid JSON"),
        (b'{"schema":1,"version":1,"deployment":{"\xff":1}}', "invalid_utf8", "offset 39"),
        (b"\xef\xbb\xbf" + enc(GOOD), "invalid_json", "not valid JSON"),  # a BOM is not JSON
        (b"[" * 10_000 + b"]" * 10_000, "too_deep", "10000 levels"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too_deep", "limit is 32"),
        (b'{"pad":"' + b"x" * 10_000_000 + b'"}', "too_large", "limit is 1048576"),
        (enc({**GOOD, "deployment": {"modules": []}}), "invalid_deployment", "deployment.modules"),
        (enc({**GOOD, "deployment": {"modules": {"a": 1}}}), "invalid_deployment", "deployment.modules.a"),
    ],
)
def test_hostile_documents_are_rejected_with_a_named_reason(raw: bytes, code: str, fragment: str) -> None:
    exc = rejected(raw)
    assert exc.code == code, exc
    assert fragment in exc.description, exc.description


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    deep_string = '"' + "[" * 5000 + '\\"{' * 100 + '"'
    raw = ('{"schema":1,"version":1,"deployment":{"modules":{},"note":' + deep_string + "}}").encode()
    assert nesting_depth(raw) == 3  # {} > deployment {} > modules {}
    assert parse_desired(raw).version == 1


def test_depth_limit_is_exact() -> None:
    limits = Limits(max_depth=4)
    ok = enc({"schema": 1, "version": 1, "deployment": {"a": {"b": {}}}})  # depth 4
    assert parse_desired(ok, limits).version == 1
    too = enc({"schema": 1, "version": 1, "deployment": {"a": {"b": {"c": []}}}})
    with pytest.raises(DesiredRejected, match="too_deep"):
        parse_desired(too, limits)


def test_replay_and_duplicate() -> None:
    raw = enc(GOOD)
    verdict, doc, payload = evaluate(raw, last_version=None, last_digest=None)
    assert verdict == "accept" and payload == raw
    # The same bytes again (a retained re-delivery) are a duplicate, not an error.
    assert evaluate(raw, last_version=3, last_digest=doc.digest)[0] == "duplicate"
    # Same version, other content: refused.
    other = enc({**GOOD, "deployment": {"modules": {}}})
    assert rejected(other, last_version=3, last_digest=doc.digest).code == "replayed"
    # Older version: refused, naming both versions.
    exc = rejected(enc({**GOOD, "version": 2}), last_version=3, last_digest=doc.digest)
    assert exc.code == "replayed" and "version 2" in exc.description and "version 3" in exc.description
    assert evaluate(enc({**GOOD, "version": 4}), last_version=3, last_digest=doc.digest)[0] == "accept"


def test_signature_gate_and_validator_are_called_in_order() -> None:
    calls: list[str] = []

    def gate(raw: bytes) -> bytes:
        calls.append("gate")
        if not raw.startswith(b"SIGNED:"):
            raise DesiredRejected("unsigned", "no signature")
        return raw.removeprefix(b"SIGNED:")

    def validator(deployment: Any) -> object:
        calls.append("validator")
        return default_deployment_validator(deployment)

    assert rejected(enc(GOOD), signature_gate=gate, validate_deployment=validator).code == "unsigned"
    verdict, _, payload = evaluate(
        b"SIGNED:" + enc(GOOD), last_version=None, last_digest=None, signature_gate=gate, validate_deployment=validator
    )
    assert verdict == "accept" and payload == enc(GOOD) and calls == ["gate", "gate", "validator"]
    # The size limit applies before the gate sees anything.
    calls.clear()
    assert rejected(b"SIGNED:" + b"x" * 2_000_000, signature_gate=gate).code == "too_large"
    assert calls == []


def test_validator_not_called_for_duplicates_or_replays() -> None:
    def validator(deployment: Any) -> object:
        raise AssertionError("must not be called")

    doc = parse_desired(enc(GOOD))
    assert version_verdict(doc, 3, doc.digest) == "duplicate"
    assert evaluate(enc(GOOD), last_version=3, last_digest=doc.digest, validate_deployment=validator)[0] == "duplicate"


def test_peek_version() -> None:
    assert peek_version(enc({"version": 7})) == 7
    assert peek_version(enc({"version": True})) is None
    assert peek_version(b"\xff") is None
    assert peek_version(b"[" * 100) is None


# ------------------------------------------------------------------------ fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


def _check_outcome(raw: bytes) -> None:
    try:
        verdict, doc, _ = evaluate(raw, last_version=5, last_digest="x" * 64)
    except DesiredRejected as exc:
        assert exc.code in {
            "too_large",
            "invalid_utf8",
            "too_deep",
            "invalid_json",
            "invalid_document",
            "unsupported_schema",
            "replayed",
            "invalid_deployment",
        }
        assert exc.description
        return
    assert verdict == "accept" and doc.version > 5
    assert isinstance(doc.deployment.get("modules"), dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _check_outcome(raw)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    _check_outcome(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "schema": st.sampled_from([1, 2, "1", None, True]),
            "version": st.one_of(st.integers(-3, 12), st.text(max_size=3), st.floats(0, 10)),
            "deployment": st.one_of(json_values, st.fixed_dictionaries({"modules": json_values})),
            "properties": json_values,
            "meta": json_values,
            "junk": json_values,
        },
    )
)
def test_fuzz_near_valid_documents(doc: dict[str, Any]) -> None:
    _check_outcome(json.dumps(doc).encode())
