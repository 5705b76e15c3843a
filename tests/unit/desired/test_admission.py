"""The document gate, admit(): every refusal code at its own stage, authenticated versions only,
duplicates, rotation, document_mode off, and a fuzz (edge_agent/desired/admission.py)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.desired import admission
from edge_agent.desired.admission import (
    MAX_VERSION,
    Admitted,
    Decision,
    DocumentTrust,
    Duplicate,
    History,
    Refused,
    admit,
    digest_of,
)
from edge_shared import document
from edge_shared.document import DOCUMENT_PAYLOAD_TYPE, Limits, nesting_depth
from edge_shared.spec import validate_deployment
from edge_shared.trust import keys
from edge_shared.trust.cosign import DsseEnvelope, DsseSignature, dsse_pae
from edgectl.documents import sign_document

OLD = keys.generate_private_key()
NEW = keys.generate_private_key()
EVIL = keys.generate_private_key()
NOW = time.time()


def trusted(priv: keys.PrivateKey) -> keys.TrustedKey:
    return keys.parse_public_key(keys.public_key_pem(priv.public_key()), "test")


def pem(priv: keys.PrivateKey) -> bytes:
    return keys.public_key_pem(priv.public_key())


ENFORCE = DocumentTrust("enforce", (trusted(OLD),))
DEPLOYMENT = {"modules": {"pilot": {"image": "reg.local/pilot:1"}}}


def doc(version: int, **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "version": version, "deployment": DEPLOYMENT, **extra}


def signed(document: Mapping[str, Any], key: keys.PrivateKey = OLD, **kw: Any) -> bytes:
    return sign_document(document, key, **kw)


def envelope(payload: bytes, key: keys.PrivateKey = OLD, *, payload_type: str = DOCUMENT_PAYLOAD_TYPE,
             keyid: str | None = None) -> bytes:
    """A DSSE envelope around arbitrary payload bytes (sign_document only takes objects)."""
    sig = keys.sign(key, dsse_pae(payload_type, payload))
    kid = keys.key_id(key.public_key()) if keyid is None else keyid
    return json.dumps(DsseEnvelope(payload_type, payload, (DsseSignature(kid, sig),)).to_json()).encode()


NO_HISTORY = History()
DEFAULT_LIMITS = Limits()


def run(raw: bytes, *, trust: DocumentTrust = ENFORCE, history: History = NO_HISTORY,
        limits: Limits = DEFAULT_LIMITS, now: float = NOW) -> Decision:
    return admit(raw, limits=limits, trust=trust, history=history, now=now,
                 validate=lambda d: validate_deployment(d, allowed_mount_roots=["/srv/edge-data"]))


def refused(raw: bytes, **kw: Any) -> Refused:
    decision = run(raw, **kw)
    assert isinstance(decision, Refused), decision
    assert decision.digest == digest_of(raw)
    assert decision.description
    return decision


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def unsigned(value: Any) -> bytes:
    return json.dumps(value).encode()


PAST = datetime.now(UTC) - timedelta(hours=1)
FUTURE = datetime.now(UTC) + timedelta(days=1)
DEEP = b"[" * 10_000 + b"]" * 10_000

# (id, raw bytes, trust, history, limits, code, version carried, fragment of the description)
H5 = History(5, "0" * 64)
OFF = DocumentTrust("off")
TABLE: list[tuple[str, bytes, DocumentTrust, History, Limits, str, int | None, str]] = [
    # 1. empty
    ("cleared", b"", ENFORCE, H5, Limits(), "cleared", None, "deleted"),
    # 2. size, before anything else reads the bytes
    ("too_large 10 MB", b'{"pad":"' + b"x" * 10_000_000 + b'"}', ENFORCE, History(), Limits(), "too_large",
     None, "limit is 1048576"),
    ("too_large and invalid utf8 and deep", b"\xff" + DEEP, ENFORCE, History(), Limits(max_bytes=1024),
     "too_large", None, "limit is 1024"),
    ("too_large signed", signed(doc(6, meta={"pad": "x" * 3000})), ENFORCE, History(), Limits(max_bytes=2048),
     "too_large", None, "2048"),
    # 3. UTF-8
    ("invalid utf8", b'{"schema":1,"version":1,"deployment":{"\xff":1}}', ENFORCE, History(), Limits(),
     "invalid_utf8", None, "offset 39"),
    ("invalid utf8 before depth", b"\xff" + DEEP, ENFORCE, History(), Limits(), "invalid_utf8", None, "offset 0"),
    ("invalid utf8 with a huge version", b'{"version":9007199254740991,"x":"\xc3\x28"}', ENFORCE, History(),
     Limits(), "invalid_utf8", None, "not UTF-8"),
    # 4. depth, before the parser
    ("10,000 deep array", DEEP, ENFORCE, History(), Limits(), "too_deep", None, "10000 levels"),
    ("10,000 deep object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, ENFORCE, History(), Limits(), "too_deep",
     None, "limit is 32"),
    ("10,000 deep unterminated", b"[" * 10_000, ENFORCE, History(), Limits(), "too_deep", None, "10000"),
    ("deep inside a signed payload", envelope(b'{"schema":1,"version":7,"x":' + DEEP + b"}"), ENFORCE,
     History(), Limits(), "too_deep", None, "payload"),
    # 5. strict JSON
    ("not json", b"not json", ENFORCE, History(), Limits(), "invalid_json", None, "line 1 column 1"),
    ("truncated", b"{", ENFORCE, History(), Limits(), "invalid_json", None, "not valid JSON"),
    ("duplicate key", b'{"schema":1,"schema":1,"version":1,"deployment":{}}', ENFORCE, History(), Limits(),
     "invalid_json", None, "duplicate key 'schema'"),
    ("NaN", b'{"schema":1,"version":1,"deployment":{"x":NaN}}', ENFORCE, History(), Limits(), "invalid_json",
     None, "NaN"),
    ("1e999", b'{"x":1e999}', ENFORCE, History(), Limits(), "invalid_json", None, "out of range"),
    ("5000-digit int", b'{"x":' + b"9" * 5000 + b"}", ENFORCE, History(), Limits(), "invalid_json", None,
     "not valid JSON"),
    ("BOM", b"\xef\xbb\xbf" + unsigned(doc(1)), ENFORCE, History(), Limits(), "invalid_json", None, "JSON"),
    ("invalid json inside a signed payload", envelope(b'{"version":7,'), ENFORCE, History(), Limits(),
     "invalid_json", None, "payload"),
    # 6. signature
    ("unsigned", unsigned(doc(1)), ENFORCE, History(), Limits(), "unsigned", None, "edgectl"),
    ("unsigned with the largest version", unsigned(doc(9007199254740991)), ENFORCE, H5, Limits(), "unsigned",
     None, "signed envelope"),
    ("unsigned list", b"[1]", ENFORCE, History(), Limits(), "unsigned", None, "signed envelope"),
    ("no signatures", b'{"payloadType":"x","signatures":[]}', ENFORCE, History(), Limits(), "bad_signature",
     None, "payload"),
    ("empty signature list", json.dumps({"payloadType": DOCUMENT_PAYLOAD_TYPE, "signatures": [],
                                         "payload": base64.b64encode(unsigned(doc(1))).decode()}).encode(),
     ENFORCE, History(), Limits(), "bad_signature", None, "non-empty list"),
    ("bad base64 payload", b'{"payloadType":"%s","payload":"!!","signatures":[{"sig":"AA=="}]}'
     % DOCUMENT_PAYLOAD_TYPE.encode(), ENFORCE, History(), Limits(), "bad_signature", None, "payload"),
    ("wrong payloadType", envelope(unsigned(doc(7)), payload_type="application/vnd.in-toto+json"), ENFORCE,
     History(), Limits(), "bad_signature", None, DOCUMENT_PAYLOAD_TYPE),
    ("untrusted key", signed(doc(7), EVIL), ENFORCE, History(), Limits(), "untrusted_key", None,
     trusted(EVIL).short_id),
    ("keyid names an unknown key", envelope(unsigned(doc(7)), OLD, keyid="ab" * 32), ENFORCE, History(),
     Limits(), "untrusted_key", None, "abababab"),
    ("keyid names the trusted key, signed by another", envelope(unsigned(doc(7)), EVIL,
                                                                keyid=trusted(OLD).key_id),
     ENFORCE, History(), Limits(), "bad_signature", None, "does not verify"),
    ("no keys configured", signed(doc(7)), DocumentTrust("enforce", ()), History(), Limits(), "untrusted_key",
     None, "none configured"),
    # 7. gate-owned fields (authenticated from here on: the version is carried)
    ("expired", signed(doc(7), expires_in=timedelta(minutes=5), now=PAST - timedelta(minutes=10)), ENFORCE,
     History(), Limits(), "expired", 7, "expired at"),
    ("expiry required", signed(doc(7), expires_in=None), DocumentTrust("enforce", (trusted(OLD),), True),
     History(), Limits(), "expired", 7, "require_document_expiry"),
    ("expires not a string", signed(doc(7, expires=1234567890), expires_in=None), ENFORCE, History(), Limits(),
     "invalid_expires", 7, "RFC 3339"),
    ("expires not a time", signed(doc(7, expires="tomorrow"), expires_in=None), ENFORCE, History(), Limits(),
     "invalid_expires", 7, "tomorrow"),
    ("expires without a zone", signed(doc(7, expires="2099-01-01T00:00:00"), expires_in=None), ENFORCE,
     History(), Limits(), "invalid_expires", 7, "no time zone"),
    ("expired with an offset", signed(doc(7, expires=PAST.astimezone(
        timezone(timedelta(hours=5))).isoformat()), expires_in=None), ENFORCE, History(),
     Limits(), "expired", 7, "expired at"),
    ("trust not an object", signed(doc(7, trust=["x"])), ENFORCE, History(), Limits(), "invalid_trust", 7,
     "documentKeys"),
    ("trust with extra keys", signed(doc(7, trust={"documentKeys": [pem(NEW).decode()], "mode": "off"})),
     ENFORCE, History(), Limits(), "invalid_trust", 7, "exactly"),
    ("trust with no keys", signed(doc(7, trust={"documentKeys": []})), ENFORCE, History(), Limits(),
     "invalid_trust", 7, "non-empty list"),
    ("trust with a non-string", signed(doc(7, trust={"documentKeys": [1]})), ENFORCE, History(), Limits(),
     "invalid_trust", 7, "non-empty list"),
    ("trust with a bad PEM", signed(doc(7), rotate_to=[b"not a key"]), ENFORCE, History(), Limits(),
     "invalid_trust", 7, "documentKeys[0]"),
    # 8. envelope schema and types
    ("payload not an object", envelope(b"[1,2]"), ENFORCE, History(), Limits(), "invalid_document", None,
     "got list"),
    ("schema missing", signed({"version": 7, "deployment": DEPLOYMENT}), ENFORCE, History(), Limits(),
     "invalid_document", 7, "schema: field required"),
    ("schema 2", signed(doc(7, schema=2)), ENFORCE, History(), Limits(), "unsupported_schema", 7, "got 2"),
    ("schema '1'", signed(doc(7, schema="1")), ENFORCE, History(), Limits(), "unsupported_schema", 7, 'got "1"'),
    ("schema true", signed(doc(7, schema=True)), ENFORCE, History(), Limits(), "unsupported_schema", 7,
     "got true"),
    ("version a string", signed(doc(7) | {"version": "7"}), ENFORCE, History(), Limits(), "invalid_document",
     None, "version"),
    ("version a bool", signed(doc(7) | {"version": True}), ENFORCE, History(), Limits(), "invalid_document", None,
     "version"),
    ("version 0", signed(doc(0)), ENFORCE, History(), Limits(), "invalid_document", 0, "greater than or equal"),
    ("version beyond 2^53-1", signed(doc(MAX_VERSION + 1)), ENFORCE, History(), Limits(), "invalid_document",
     MAX_VERSION + 1, "version"),
    ("deployment a list", signed(doc(7) | {"deployment": []}), ENFORCE, History(), Limits(), "invalid_document", 7,
     "deployment"),
    ("unknown field", signed(doc(7, surprise=1)), ENFORCE, History(), Limits(), "invalid_document", 7,
     "surprise: unknown field"),
    ("properties not objects", signed(doc(7, properties={"pilot": 1})), ENFORCE, History(), Limits(),
     "invalid_document", 7, "properties.pilot"),
    # 9. replay
    ("same version other bytes", signed(doc(5)), ENFORCE, H5, Limits(), "replayed", 5, "version 5"),
    ("older version", signed(doc(4)), ENFORCE, H5, Limits(), "replayed", 4, "not newer than version 5"),
    ("replayed rotation", signed(doc(4), rotate_to=[pem(NEW)]), ENFORCE, H5, Limits(), "replayed", 4, "version 4"),
    # 10. the deployment
    ("modules a list", signed(doc(7) | {"deployment": {"modules": []}}), ENFORCE, History(), Limits(),
     "invalid_deployment", 7, "modules"),
    ("module not an object", signed(doc(7) | {"deployment": {"modules": {"a": 1}}}), ENFORCE, History(), Limits(),
     "invalid_deployment", 7, "a"),
    ("image without a registry", signed(doc(7) | {"deployment": {"modules": {"a": {"image": "pilot:1"}}}}),
     ENFORCE, History(), Limits(), "invalid_deployment", 7, "image"),
    ("mount outside the roots", signed(doc(7) | {"deployment": {"modules": {"a": {
        "image": "reg.local/a:1", "mounts": [{"source": "/etc", "target": "/x"}]}}}}), ENFORCE, History(),
     Limits(), "invalid_deployment", 7, "/srv/edge-data"),
    ("rotation in an invalid deployment", signed(doc(7) | {"deployment": {"modules": []}}, rotate_to=[pem(NEW)]),
     ENFORCE, History(), Limits(), "invalid_deployment", 7, "modules"),
    ("rotation in an expired document", signed(doc(7), rotate_to=[pem(EVIL)], expires_in=timedelta(seconds=1),
                                               now=PAST), ENFORCE, History(), Limits(), "expired", 7, "expired"),
    # document_mode off: no signature, the rest applies
    ("off: signed envelope is not a document", signed(doc(7)), OFF, History(), Limits(), "invalid_document", None,
     "schema"),
    ("off: replayed", unsigned(doc(5)), OFF, H5, Limits(), "replayed", 5, "version 5"),
    ("off: invalid deployment", unsigned(doc(7) | {"deployment": {"modules": []}}), OFF, History(), Limits(),
     "invalid_deployment", 7, "modules"),
    ("off: too deep", DEEP, OFF, History(), Limits(), "too_deep", None, "10000"),
]


@pytest.mark.parametrize(
    ("raw", "trust", "history", "limits", "code", "version", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_refusal_table(raw: bytes, trust: DocumentTrust, history: History, limits: Limits, code: str,
                       version: int | None, fragment: str) -> None:
    decision = refused(raw, trust=trust, history=history, limits=limits)
    assert (decision.code, decision.version) == (code, version), decision
    assert fragment in decision.description, decision.description


def test_every_documented_code_is_in_the_table() -> None:
    doc_codes = {
        "cleared", "too_large", "invalid_utf8", "too_deep", "invalid_json", "unsigned", "bad_signature",
        "untrusted_key", "expired", "invalid_expires", "invalid_trust", "invalid_document", "unsupported_schema",
        "replayed", "invalid_deployment", "too_many_signatures",
    }
    for code in doc_codes:
        assert code in (admission.__doc__ or ""), code
    assert {row[5] for row in TABLE} | {"too_many_signatures"} == doc_codes  # (its own test below)


def test_ten_thousand_signatures_are_refused_before_any_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone who can publish on the desired topic could otherwise buy seconds of event-loop CPU
    with one message: the count is checked before any signature is decoded or verified."""
    calls: list[str] = []

    def forbidden(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called for an envelope with too many signatures")
        return call

    good = json.loads(signed(doc(1)))
    many = {**good, "signatures": good["signatures"] * 10_000}
    keyless = {**good, "signatures": [{"sig": good["signatures"][0]["sig"]}] * 9_500}  # fits in 1 MiB
    monkeypatch.setattr(document, "parse_dsse_envelope", forbidden("parse_dsse_envelope"))
    monkeypatch.setattr(document, "dsse_pae", forbidden("dsse_pae"))
    monkeypatch.setattr(keys.TrustedKey, "verify", forbidden("TrustedKey.verify"))
    # 10,000 signatures make some 1.8 MB: a device configured for larger documents (up to 64 MiB).
    decision = refused(json.dumps(many).encode(), limits=Limits(max_bytes=8 * 1024 * 1024))
    assert decision.code == "too_many_signatures" and decision.version is None  # not authenticated
    assert "10000" in decision.description and "twin.max_document_signatures" in decision.description
    raw = json.dumps(keyless).encode()
    assert len(raw) <= DEFAULT_LIMITS.max_bytes
    assert refused(raw).code == "too_many_signatures"
    assert calls == []


def test_the_signature_cap_is_exact() -> None:
    good = json.loads(signed(doc(1)))
    at_cap = {**good, "signatures": good["signatures"] * 3}
    assert isinstance(run(json.dumps(at_cap).encode(), limits=Limits(max_signatures=3)), Admitted)
    over = {**good, "signatures": good["signatures"] * 4}
    assert refused(json.dumps(over).encode(), limits=Limits(max_signatures=3)).code == "too_many_signatures"


def test_too_large_is_decided_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any) -> Any:
        raise AssertionError("parsed an oversized document")

    monkeypatch.setattr(document, "loads_strict", forbidden)
    monkeypatch.setattr(document, "nesting_depth", forbidden)
    raw = b'{"pad":"' + b"x" * 2_000_000 + b'"}'
    assert refused(raw).code == "too_large"
    assert refused(b"\xff" + DEEP, limits=Limits(max_bytes=1024)).code == "too_large"


def test_size_limit_is_exact() -> None:
    raw = signed(doc(7))
    assert isinstance(run(raw, limits=Limits(max_bytes=len(raw))), Admitted)
    assert refused(raw, limits=Limits(max_bytes=len(raw) - 1)).code == "too_large"


def test_depth_limit_is_exact_and_strings_do_not_count() -> None:
    ok = unsigned({"schema": 1, "version": 1, "deployment": {"modules": {}}})  # depth 3
    assert nesting_depth(ok) == 3
    assert isinstance(run(ok, trust=OFF, limits=Limits(max_depth=3)), Admitted)
    assert refused(ok, trust=OFF, limits=Limits(max_depth=2)).code == "too_deep"
    deep_string = '"' + "[" * 5000 + '\\"{' * 100 + '"'
    raw = ('{"schema":1,"version":1,"deployment":{"modules":{}},"meta":{"note":' + deep_string + "}}").encode()
    assert nesting_depth(raw) == 3
    assert isinstance(run(raw, trust=OFF), Admitted)


# The depth scan is linear even in an unterminated string full of escaped quotes ('"' followed by
# '\\"' n times), where a backtracking string pattern is quadratic: any publisher could stall the loop.
def test_depth_scan_is_linear_in_an_unterminated_string_of_escaped_quotes() -> None:
    # Not a speed figure (those are in bench/) but a complexity guard: linear takes milliseconds
    # for 1 MB, quadratic would take hours, so the bound cannot be hit by a slow or busy machine.
    raw = b'"' + b'\\"' * 500_000  # 1 MB
    started = time.perf_counter()
    decision = run(raw, limits=Limits(max_bytes=2 * 1024 * 1024))
    elapsed = time.perf_counter() - started
    assert isinstance(decision, Refused) and decision.code == "invalid_json"
    assert elapsed < 10, f"{len(raw)} bytes took {elapsed:.2f} s"


# --------------------------------------------------------------------------- what passes


def test_signed_valid_document_is_admitted() -> None:
    raw = signed(doc(7, properties={"pilot": {"speed": 2}}, meta={"by": "ci"}), expires_in=timedelta(hours=1))
    decision = run(raw, history=H5)
    assert isinstance(decision, Admitted)
    assert decision.version == 7 and decision.digest == digest_of(raw)
    assert decision.document == DEPLOYMENT  # as received; the gate fields are not part of it
    assert set(decision.deployment.modules) == {"pilot"}
    assert decision.properties == {"pilot": {"speed": 2}}
    assert decision.signer == trusted(OLD).short_id
    assert decision.expires is not None and decision.expires.timestamp() > NOW
    assert decision.new_keys is None


@pytest.mark.parametrize("written", ["{}Z", "{}z", "{}+00:00", " {}Z "])
def test_expiry_formats(written: str) -> None:
    stamp = FUTURE.strftime("%Y-%m-%dT%H:%M:%S")
    decision = run(signed(doc(7, expires=written.format(stamp)), expires_in=None))
    assert isinstance(decision, Admitted)
    assert decision.expires is not None and abs(decision.expires.timestamp() - FUTURE.timestamp()) < 1


def test_expiry_is_checked_against_the_callers_clock() -> None:
    raw = signed(doc(7), expires_in=timedelta(minutes=5), now=datetime.fromtimestamp(NOW, UTC))
    assert isinstance(run(raw, now=NOW + 299), Admitted)
    assert refused(raw, now=NOW + 300).code == "expired"


def test_empty_keyid_tries_every_trusted_key() -> None:
    raw = envelope(unsigned(doc(7)), NEW, keyid="")
    decision = run(raw, trust=DocumentTrust("enforce", (trusted(OLD), trusted(NEW))))
    assert isinstance(decision, Admitted) and decision.signer == trusted(NEW).short_id
    assert refused(raw).code == "untrusted_key"


def test_one_good_signature_among_several_is_enough() -> None:
    payload = unsigned(doc(7))
    pae = dsse_pae(DOCUMENT_PAYLOAD_TYPE, payload)
    sigs = (DsseSignature(keys.key_id(EVIL.public_key()), keys.sign(EVIL, pae)),
            DsseSignature(keys.key_id(OLD.public_key()), keys.sign(OLD, pae)))
    raw = json.dumps(DsseEnvelope(DOCUMENT_PAYLOAD_TYPE, payload, sigs).to_json()).encode()
    decision = run(raw)
    assert isinstance(decision, Admitted) and decision.signer == trusted(OLD).short_id


def test_altered_payload_is_a_bad_signature() -> None:
    env = json.loads(signed(doc(7)))
    body = json.loads(base64.b64decode(env["payload"]))
    body["deployment"]["modules"]["pilot"]["image"] = "evil.example/miner:1"
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    decision = refused(json.dumps(env).encode())
    assert decision.code == "bad_signature" and decision.version is None


# base64.b64decode raises a plain ValueError (not binascii.Error) for a non-ASCII character: the gate
# must refuse such an envelope (bad_signature, no version), not raise.
@pytest.mark.parametrize("field", ["payload", "sig"])
def test_non_ascii_base64_is_refused_not_raised(field: str) -> None:
    env = json.loads(signed(doc(7)))
    if field == "payload":
        env["payload"] = "\u00e9" + env["payload"]
    else:
        env["signatures"][0]["sig"] = "\u00e9" + env["signatures"][0]["sig"]
    decision = refused(json.dumps(env).encode())
    assert (decision.code, decision.version) == ("bad_signature", None)


def test_duplicate_bytes_are_a_duplicate() -> None:
    raw = signed(doc(5))
    assert run(raw, history=History(5, digest_of(raw))) == Duplicate(5)
    # the same version with the digest of other bytes is a replay, not a duplicate
    assert refused(raw, history=History(5, digest_of(raw + b" "))).code == "replayed"
    # an older version is a replay even with a matching digest
    assert refused(raw, history=History(6, digest_of(raw))).code == "replayed"


def test_duplicate_needs_a_valid_signature() -> None:
    # Bytes whose digest the device knows still go through the signature gate: a forged envelope can
    # not be a duplicate (its digest differs) and an unsigned copy is refused unauthenticated.
    raw = unsigned(doc(5))
    decision = refused(raw, history=History(5, digest_of(raw)))
    assert decision.code == "unsigned" and decision.version is None


def test_admitted_carries_the_new_keys_of_a_valid_rotation() -> None:
    decision = run(signed(doc(7), rotate_to=[pem(NEW), pem(OLD)]), history=H5)
    assert isinstance(decision, Admitted)
    assert decision.new_keys is not None
    assert [k.key_id for k in decision.new_keys] == [trusted(NEW).key_id, trusted(OLD).key_id]
    assert "trust" not in decision.document


def test_a_refused_rotation_yields_no_admitted() -> None:
    for raw, history in [
        (signed(doc(4), rotate_to=[pem(EVIL)]), H5),  # replayed
        (signed(doc(7) | {"deployment": {"modules": []}}, rotate_to=[pem(EVIL)]), H5),  # invalid_deployment
        (signed(doc(7), EVIL, rotate_to=[pem(EVIL)]), H5),  # untrusted key
    ]:
        assert isinstance(run(raw, history=history), Refused)


def test_document_mode_off_admits_unsigned_documents() -> None:
    raw = unsigned(doc(9, properties={"pilot": {"a": 1}}))
    decision = run(raw, trust=OFF, history=H5)
    assert isinstance(decision, Admitted)
    assert decision.signer is None and decision.version == 9 and decision.new_keys is None
    assert decision.expires is None


def test_document_mode_off_does_not_honour_gate_fields() -> None:
    # Without a signature nobody may rotate keys: "trust" stays a field the envelope does not know.
    raw = unsigned(doc(9, trust={"documentKeys": [pem(EVIL).decode()]}))
    decision = refused(raw, trust=OFF)
    assert decision.code == "invalid_document" and "trust" in decision.description


# --------------------------------------------------------------------------- fuzz

CODES = {row[5] for row in TABLE}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
VALID = signed(doc(7), expires_in=timedelta(days=365))
EVIL_VALID = signed(doc(7), EVIL, expires_in=timedelta(days=365))


def _never_raises(raw: bytes, trust: DocumentTrust = ENFORCE) -> Decision:
    decision = run(raw, trust=trust, history=H5)
    if isinstance(decision, Refused):
        assert decision.code in CODES, decision
        assert decision.description
    return decision


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_garbage_is_never_admitted(raw: bytes) -> None:
    decision = _never_raises(raw)
    assert isinstance(decision, Refused)
    assert decision.version is None  # not authenticated: no version may leak


# Mutated signed envelopes: refused or admitted as signed by the right key, never an exception.
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_envelopes(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from([VALID, EVIL_VALID]))
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "delete":
            del raw[pos]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    decision = _never_raises(bytes(raw))
    if isinstance(decision, Admitted):
        # Only an envelope by the trusted key, with its payload unchanged (base64 has spare bits).
        assert original == VALID and decision.signer == trusted(OLD).short_id
        assert decision.version == 7 and decision.document == DEPLOYMENT
    if isinstance(decision, Refused) and decision.code in ("unsigned", "bad_signature", "untrusted_key"):
        assert decision.version is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.sampled_from([OLD, EVIL]))
def test_fuzz_signed_arbitrary_payloads(value: Any, key: keys.PrivateKey) -> None:
    decision = _never_raises(envelope(json.dumps(value).encode(), key))
    if key is EVIL:
        assert isinstance(decision, Refused) and decision.code == "untrusted_key" and decision.version is None
    else:
        assert not isinstance(decision, Admitted | Duplicate)  # none of these is a valid document


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "schema": st.sampled_from([1, 2, "1", None, True]),
            "version": st.one_of(st.integers(-3, 12), st.text(max_size=3), st.floats(0, 10)),
            "deployment": st.one_of(json_values, st.fixed_dictionaries({"modules": json_values})),
            "properties": json_values,
            "meta": json_values,
            "expires": st.one_of(st.text(max_size=30), st.integers()),
            "trust": json_values,
            "junk": json_values,
        },
    )
)
def test_fuzz_near_valid_unsigned_documents_in_mode_off(value: dict[str, Any]) -> None:
    decision = _never_raises(json.dumps(value).encode(), trust=OFF)
    if isinstance(decision, Admitted):
        assert decision.version > 5 and isinstance(decision.document.get("modules"), dict)
