"""The TPM worker's wire format: every TpmBackend call survives the JSON round trip unchanged,
bad lines get structured errors (never an exception out of `execute`), and ak_name computed
with hashlib equals tpm2-pytss's name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.attestation.tpm import Endorsement, RawQuote, TpmBackend, TpmError
from edge_agent.attestation.tpm_wire import (
    BYE,
    Answer,
    WireError,
    args_for,
    bye_line,
    endorsement_from_wire,
    endorsement_to_wire,
    execute,
    parse_answer,
    quote_from_wire,
    quote_to_wire,
    request_line,
    result_from_wire,
)
from edge_shared.attestation import ak_name
from tests.fakes.tpm import FakeTpm

pcr_values = st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32))


class Loopback:
    """A TpmBackend that sends every call through the wire format to `execute` on another backend:
    exactly what SubprocessTpm and the worker do, minus the pipe."""

    def __init__(self, inner: TpmBackend) -> None:
        self.inner = inner
        self.next_id = 1

    def call(self, op: str, *params: Any) -> Any:
        line = request_line(self.next_id, op, args_for(op, *params))
        answer = parse_answer(execute(self.inner, line.rstrip(b"\n")))
        assert isinstance(answer, Answer) and answer.id == self.next_id
        self.next_id += 1
        if not answer.ok:
            raise TpmError(f"{answer.error_kind}: {answer.error_message}")
        return result_from_wire(op, json.loads(json.dumps(answer.result)))


@given(st.lists(st.tuples(st.integers(0, 23), st.binary(min_size=32, max_size=32)), max_size=8),
       st.lists(st.integers(0, 23), min_size=1, max_size=24), st.binary(min_size=1, max_size=64))
def test_backend_calls_round_trip_through_the_wire(extends: list[tuple[int, bytes]], pcrs: list[int],
                                                  nonce: bytes) -> None:
    direct, remote = FakeTpm(), FakeTpm()
    remote._key = direct._key  # same AK, so quotes can be compared byte for byte
    loop = Loopback(remote)
    for pcr, digest in extends:
        direct.pcr_extend(pcr, digest)
        assert loop.call("pcr_extend", pcr, digest) is None
    assert loop.call("pcr_read", pcrs) == direct.pcr_read(pcrs)
    assert loop.call("describe") == direct.describe()
    quote = loop.call("quote", pcrs, nonce)
    assert isinstance(quote, RawQuote) and quote.pcrs == direct.pcr_read(pcrs)
    assert loop.call("ak_public") == direct.ak_public()


def test_tpm_errors_come_back_as_structured_errors() -> None:
    loop = Loopback(FakeTpm())
    with pytest.raises(TpmError, match=r"^tpm: PCR extend needs a 32-byte SHA-256 digest, got 3 bytes$"):
        loop.call("pcr_extend", 23, b"abc")
    with pytest.raises(TpmError, match=r"^tpm: the fake TPM has no endorsement key$"):
        loop.call("endorsement")


@pytest.mark.parametrize(
    ("line", "id_", "needle"),
    [
        (b"not json", None, "not a JSON line"),
        (b"[1, 2]", None, "expected a JSON object"),
        (b'{"id": 4, "op": "format_disk"}', 4, "op: 'format_disk' is not one of"),
        (b'{"id": true, "op": "describe"}', None, "id: expected an integer"),
        (b'{"id": 5, "op": "pcr_read", "args": {"pcrs": [1, 99]}}', 5, "PCR indexes 0-23"),
        (b'{"id": 6, "op": "pcr_read", "args": {"pcrs": []}}', 6, "non-empty list"),
        (b'{"id": 7, "op": "pcr_extend", "args": {"pcr": 23, "digest": "%%%"}}', 7, "digest: not valid base64"),
        (b'{"id": 8, "op": "quote", "args": {"pcrs": [0], "nonce": 12}}', 8, "nonce: expected base64 text"),
        (b'{"id": 9, "op": "pcr_read", "args": []}', 9, "args: expected an object"),
    ],
)
def test_malformed_requests_get_request_errors(line: bytes, id_: int | None, needle: str) -> None:
    answer = parse_answer(execute(FakeTpm(), line))
    assert isinstance(answer, Answer) and not answer.ok and answer.id == id_
    assert answer.error_kind == "request" and needle in answer.error_message


@given(st.binary(max_size=200))
def test_execute_never_raises_on_arbitrary_bytes(line: bytes) -> None:
    answer = parse_answer(execute(FakeTpm(), line.replace(b"\n", b" ")))
    assert isinstance(answer, Answer)


@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=900)), st.sampled_from(["ecc", "rsa"]))
def test_endorsement_codec_round_trips(public: bytes, cert: bytes | None, ek_type: str) -> None:
    value = Endorsement(public, cert, ek_type)  # type: ignore[arg-type]
    assert endorsement_from_wire(json.loads(json.dumps(endorsement_to_wire(value)))) == value


@given(st.binary(max_size=200), st.binary(max_size=100), pcr_values)
def test_quote_codec_round_trips(attest: bytes, signature: bytes, pcrs: dict[int, bytes]) -> None:
    value = RawQuote(attest, signature, pcrs)
    assert quote_from_wire(json.loads(json.dumps(quote_to_wire(value)))) == value


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b'{"id": 1, "ok": "yes"}', "ok: expected true or false"),
        (b'{"id": 1, "ok": false, "error": "boom"}', "error: expected an object"),
        (b"\xff\xfe", "not a JSON line"),
    ],
)
def test_malformed_answers_are_wire_errors(line: bytes, needle: str) -> None:
    with pytest.raises(WireError, match=needle):
        parse_answer(line)


def test_bye_and_results_are_checked_by_type() -> None:
    assert parse_answer(bye_line().rstrip()) is BYE
    with pytest.raises(WireError, match="describe: expected text"):
        result_from_wire("describe", 3)
    with pytest.raises(WireError, match="pcr_extend: expected null"):
        result_from_wire("pcr_extend", "x")
    with pytest.raises(WireError, match="pcrs: key 'a' is not a PCR index"):
        result_from_wire("pcr_read", {"a": ""})
    with pytest.raises(WireError, match=r"endorsement\.ek_type"):
        result_from_wire("endorsement", {"ek_public": "", "ek_type": "dsa"})


# ----------------------------------------------------------------- ak_name without tpm2-pytss


def _pytss_name(public: bytes) -> bytes:
    from tpm2_pytss.types import TPM2B_PUBLIC

    parsed, _ = TPM2B_PUBLIC.unmarshal(public)
    return bytes(parsed.get_name().marshal())[2:]


def _public_from_key(key: Any, name_alg: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from tpm2_pytss.types import TPM2B_PUBLIC

    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bytes(TPM2B_PUBLIC.from_pem(pem, nameAlg=name_alg).marshal())


@pytest.mark.parametrize("alg", ["SHA1", "SHA256", "SHA384", "SHA512"])
@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048"])
def test_ak_name_matches_tpm2_pytss(alg: str, kind: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from tpm2_pytss.constants import TPM2_ALG

    key: Any = (ec.generate_private_key(ec.SECP256R1()) if kind == "p256" else
                ec.generate_private_key(ec.SECP384R1()) if kind == "p384" else
                rsa.generate_private_key(public_exponent=65537, key_size=2048))
    public = _public_from_key(key, getattr(TPM2_ALG, alg))
    assert ak_name(public) == _pytss_name(public)


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"\x00", "too short"),
        (b"\x00\x09\x00\x23\x00\x0b\x00\x00", "says 9 bytes, 6 follow"),
        (b"\x00\x06\x00\x23\x00\x12\x00\x00", "unsupported name algorithm 0x0012"),
    ],
)
def test_ak_name_refuses_what_is_not_a_tpm2b_public(blob: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ak_name(blob)
