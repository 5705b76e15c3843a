"""Our key files and signatures against cosign's published formats, field by field.
Fixtures: tests/fixtures/cosign (README.md there says where each format is defined)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from edge_shared.trust import cosign, keys
from edge_shared.trust.policy import Accepted, ScopePolicy, check_simplesigning

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cosign"
PASS = b"edge-agent-fixture"
DIGEST = "sha256:4c1b2b7a4f5e3d2c1b0a99887766554433221100ffeeddccbbaa998877665544"
REPO = "registry.example.com/fleet/pilot"


def shape(value: Any) -> Any:
    """Structure of a JSON value: keys and value types, not values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def pem_body(data: bytes) -> bytes:
    lines = data.decode().strip().splitlines()
    return base64.b64decode("".join(lines[1:-1]))


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("n", [32768, 65536])
def test_cosign_encrypted_key_loads_for_both_scrypt_costs(n: int) -> None:
    key = keys.load_private_key(FIX / f"cosign-n{n}.key", PASS)
    pub = keys.load_public_key(FIX / f"cosign-n{n}.pub")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert keys.key_id(key.public_key()) == pub.key_id
    envelope = json.loads(pem_body((FIX / f"cosign-n{n}.key").read_bytes()))
    assert envelope["kdf"]["params"]["N"] == n


def test_secretbox_sizes_written_out_match_pynacl() -> None:
    # keys.py writes them out so the agent does not import PyNaCl; they must stay PyNaCl's.
    assert (keys.NONCE_BYTES, keys.BOX_KEY_BYTES) == (nacl.secret.SecretBox.NONCE_SIZE, nacl.secret.SecretBox.KEY_SIZE)


def test_wrong_passphrase_is_a_clear_error() -> None:
    with pytest.raises(keys.KeyFileError, match="wrong passphrase"):
        keys.load_private_key(FIX / "cosign-n32768.key", b"not it")


def test_our_private_key_file_matches_the_envelope_field_by_field() -> None:
    key = keys.generate_private_key()
    pem = keys.encrypt_private_key(key, b"pw")
    text = pem.decode()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert text.endswith("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    raw = pem_body(pem)
    envelope = json.loads(raw)
    reference = json.loads((FIX / "encrypted-key-shape.json").read_text())
    assert shape(envelope) == shape(reference)
    assert list(envelope) == ["kdf", "cipher", "ciphertext"]  # Go struct order
    assert list(envelope["kdf"]) == ["name", "params", "salt"]
    assert list(envelope["kdf"]["params"]) == ["N", "r", "p"]
    assert envelope["kdf"]["name"] == "scrypt" and envelope["cipher"]["name"] == "nacl/secretbox"
    assert envelope["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert b" " not in raw  # compact, as Go's json.Marshal
    salt = base64.b64decode(envelope["kdf"]["salt"])
    nonce = base64.b64decode(envelope["cipher"]["nonce"])
    assert len(salt) == 32 and len(nonce) == 24
    # decrypt with an independent implementation (cryptography's scrypt + PyNaCl's secretbox)
    box_key = Scrypt(salt=salt, length=32, n=32768, r=8, p=1).derive(b"pw")
    der = nacl.secret.SecretBox(box_key).decrypt(base64.b64decode(envelope["ciphertext"]), nonce)
    loaded = serialization.load_der_private_key(der, None)
    assert keys.key_id(loaded.public_key()) == keys.key_id(key.public_key())  # type: ignore[arg-type]


def test_public_key_file_is_pem_spki_like_cosign_pub() -> None:
    fixture = (FIX / "cosign-n32768.pub").read_bytes()
    trusted = keys.load_public_key(FIX / "cosign-n32768.pub")
    assert trusted.pem() == fixture
    assert fixture.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert trusted.algorithm == "ecdsa-p256"


def test_write_key_pair_refuses_to_overwrite_and_is_private(tmp_path: Path) -> None:
    priv, pub = keys.write_key_pair(tmp_path / "cosign", b"pw")
    assert priv.stat().st_mode & 0o777 == 0o600
    assert keys.load_public_key(pub).key_id == keys.key_id(keys.load_private_key(priv, b"pw").public_key())
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.write_key_pair(tmp_path / "cosign", b"pw")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e["kdf"]["params"].update(N=1 << 22), "out of range"),
        (lambda e: e["kdf"]["params"].update(N=30000), "out of range"),
        (lambda e: e["kdf"].update(name="argon2"), "kdf.name"),
        (lambda e: e["cipher"].update(name="aes"), "cipher.name"),
        (lambda e: e["cipher"].update(nonce="AAAA"), "nonce"),
        (lambda e: e.update(extra=1), "exactly"),
    ],
)
def test_malformed_encrypted_keys_are_refused(mutate: Any, message: str) -> None:
    envelope = json.loads(pem_body((FIX / "cosign-n32768.key").read_bytes()))
    mutate(envelope)
    body = base64.b64encode(json.dumps(envelope).encode()).decode()
    pem = f"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{body}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    with pytest.raises(keys.KeyFileError, match=message):
        keys.decrypt_private_key(pem.encode(), PASS)


def test_other_key_types_cosign_can_import_verify() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    for priv in (
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ):
        trusted = keys.parse_public_key(keys.public_key_pem(priv.public_key()), "mem")
        sig = keys.sign(priv, b"data")
        assert trusted.verify(sig, b"data")
        assert not trusted.verify(sig, b"other")


# ---------------------------------------------------------------- legacy simple signing


def test_simplesigning_payload_is_byte_identical_to_the_fixture() -> None:
    assert cosign.build_simplesigning_payload(REPO, DIGEST) == (FIX / "simplesigning-payload.json").read_bytes()
    annotated = cosign.build_simplesigning_payload(REPO, DIGEST, {"git-sha": "abc123", "env": "prod"})
    assert annotated == (FIX / "simplesigning-payload-annotations.json").read_bytes()


def test_fixture_signature_verifies_with_fixture_key() -> None:
    payload = (FIX / "simplesigning-payload.json").read_bytes()
    sig = base64.b64decode((FIX / "simplesigning-payload.sig").read_text().strip())
    trusted = keys.load_public_key(FIX / "cosign-n32768.pub")
    result = check_simplesigning(payload, sig, ScopePolicy(REPO, "enforce", (trusted,)), REPO, DIGEST)
    assert isinstance(result, Accepted) and result.key.key_id == trusted.key_id
    parsed = cosign.parse_simplesigning_payload(payload)
    assert (parsed.docker_reference, parsed.manifest_digest, dict(parsed.annotations)) == (REPO, DIGEST, {})


def test_legacy_signature_manifest_matches_fixture_field_by_field() -> None:
    fixture = json.loads((FIX / "legacy-signature-manifest.json").read_text())
    payload = (FIX / "simplesigning-payload.json").read_bytes()
    sig = (FIX / "simplesigning-payload.sig").read_text().strip()
    manifest_bytes, config = cosign.build_legacy_signature_manifest([(payload, sig)])
    ours = json.loads(manifest_bytes)
    assert shape(ours) == shape(fixture)
    assert ours["mediaType"] == fixture["mediaType"] and ours["schemaVersion"] == 2
    assert ours["config"]["mediaType"] == fixture["config"]["mediaType"]
    assert ours["layers"] == fixture["layers"]  # same media type, size, digest, annotation
    assert ours["config"]["digest"] == cosign.sha256_digest(config)
    parsed = cosign.parse_legacy_signature_manifest(manifest_bytes)
    assert len(parsed) == 1 and isinstance(parsed[0], cosign.LegacySignature)
    assert parsed[0].signature == base64.b64decode(sig)
    assert cosign.legacy_signature_tag(DIGEST) == "sha256-" + DIGEST[7:] + ".sig"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"critical":{},"critical":{}}', "duplicate key"),
        (b"[]", "expected an object"),
        (b"not json", "not JSON"),
        (
            b'{"critical":{"identity":{"docker-reference":"a/b"},"image":{"docker-manifest-digest":"sha256:00"},'
            b'"type":"cosign container image signature"}}',
            "not sha256",
        ),
        (
            b'{"critical":{"identity":{"docker-reference":"a/b"},"image":{"docker-manifest-digest":"%s"},'
            b'"type":"something else"}}' % DIGEST.encode(),
            "critical.type",
        ),
        (
            b'{"critical":{"identity":{"docker-reference":"a/b","extra":1},"image":{"docker-manifest-digest":"%s"},'
            b'"type":"cosign container image signature"}}' % DIGEST.encode(),
            "unexpected field extra",
        ),
        (
            b'{"critical":{"identity":{"docker-reference":"a/b"},"image":{"docker-manifest-digest":"%s"},'
            b'"type":"cosign container image signature"},"optional":"x"}' % DIGEST.encode(),
            "optional",
        ),
    ],
)
def test_simplesigning_parse_is_strict(payload: bytes, message: str) -> None:
    with pytest.raises(cosign.FormatError, match=message):
        cosign.parse_simplesigning_payload(payload)


# ---------------------------------------------------------------- v3 bundle


def test_dsse_pae_matches_the_spec() -> None:
    assert cosign.dsse_pae("application/vnd.in-toto+json", b"hello") == (
        b"DSSEv1 28 application/vnd.in-toto+json 5 hello"
    )


def test_statement_matches_fixture() -> None:
    fixture = json.loads((FIX / "intoto-statement.json").read_text())
    assert json.loads(cosign.build_statement(REPO, DIGEST)) == fixture
    parsed = cosign.parse_statement((FIX / "intoto-statement.json").read_bytes())
    assert (parsed.subject_name, parsed.subject_digest) == (REPO, DIGEST)


def test_bundle_matches_v03_shape_and_round_trips() -> None:
    fixture = json.loads((FIX / "bundle-v0.3-shape.json").read_text())
    priv = keys.load_private_key(FIX / "cosign-n32768.key", PASS)
    statement = cosign.build_statement(REPO, DIGEST)
    sig = keys.sign(priv, cosign.dsse_pae(cosign.DSSE_INTOTO_TYPE, statement))
    env = cosign.DsseEnvelope(cosign.DSSE_INTOTO_TYPE, statement, (cosign.DsseSignature("", sig),))
    bundle = cosign.build_bundle(env, "hint")
    ours = json.loads(bundle)
    assert shape(ours) == shape(fixture)
    assert ours["mediaType"] == fixture["mediaType"]
    assert ours["dsseEnvelope"]["payloadType"] == fixture["dsseEnvelope"]["payloadType"]
    parsed = cosign.parse_bundle(bundle)
    assert parsed.envelope.payload == statement and parsed.envelope.signatures[0].sig == sig


def test_referrer_manifest_matches_oci_11_shape() -> None:
    fixture = json.loads((FIX / "referrer-manifest-shape.json").read_text())
    subject = cosign.Descriptor(cosign.OCI_MANIFEST, DIGEST, 123)
    ours = json.loads(cosign.build_referrer_manifest(b"{}", subject, "2026-01-01T00:00:00Z"))
    assert shape(ours) == shape(fixture)
    assert ours["config"] == fixture["config"]  # the OCI empty descriptor, exactly
    assert ours["artifactType"] == fixture["artifactType"]
    assert ours["annotations"] == fixture["annotations"]
    assert ours["subject"] == {"mediaType": cosign.OCI_MANIFEST, "digest": DIGEST, "size": 123}
    assert cosign.referrers_fallback_tag(DIGEST) == "sha256-" + DIGEST[7:]


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ({"_type": "https://in-toto.io/Statement/v0.1", "subject": [], "predicateType": "x"}, "_type"),
        (
            {"_type": cosign.INTOTO_STATEMENT_V1, "subject": [], "predicateType": "https://slsa.dev/provenance/v1"},
            "predicateType",
        ),
        (
            {"_type": cosign.INTOTO_STATEMENT_V1, "subject": [], "predicateType": cosign.COSIGN_SIGN_PREDICATE},
            "exactly one subject",
        ),
        (
            {
                "_type": cosign.INTOTO_STATEMENT_V1,
                "predicateType": cosign.COSIGN_SIGN_PREDICATE,
                "subject": [{"name": "a", "digest": {"sha256": "ZZ"}}],
            },
            "64 lowercase hex",
        ),
    ],
)
def test_statement_parse_is_strict(statement: dict[str, Any], message: str) -> None:
    with pytest.raises(cosign.FormatError, match=message):
        cosign.parse_statement(json.dumps(statement).encode())


def test_older_cosign_pem_type_loads_too() -> None:
    text = (FIX / "cosign-n32768.key").read_text().replace("SIGSTORE", "COSIGN")
    key = keys.decrypt_private_key(text.encode(), PASS)
    assert keys.key_id(key.public_key()) == keys.load_public_key(FIX / "cosign-n32768.pub").key_id
