"""Pure trust decisions: scope selection, reference matching, signature claim checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_shared.trust import cosign, keys
from edge_shared.trust.policy import (
    Accepted,
    Refused,
    ScopePolicy,
    best_refusal,
    check_bundle,
    check_simplesigning,
    reference_matches,
    scope_matches,
    select_policy,
)

REPO = "reg.example:5000/fleet/pilot"
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
PRIV = keys.generate_private_key()
KEY = keys.parse_public_key(keys.public_key_pem(PRIV.public_key()), "test")
STRANGER = keys.generate_private_key()


def policy(**kw: object) -> ScopePolicy:
    return ScopePolicy(REPO, "enforce", (KEY,), **kw)  # type: ignore[arg-type]


def test_scope_matching_on_path_boundaries() -> None:
    assert scope_matches("*", REPO)
    assert scope_matches("reg.example:5000", REPO)
    assert scope_matches("reg.example:5000/fleet", REPO)
    assert scope_matches(REPO, REPO)
    assert not scope_matches("reg.example:5000/fle", REPO)
    assert not scope_matches("reg.example", REPO)
    assert not scope_matches(REPO + "-x", REPO)


def test_most_specific_scope_wins() -> None:
    everything = ScopePolicy("*", "enforce", (KEY,))
    registry = ScopePolicy("reg.example:5000", "warn", (KEY,))
    test_repo = ScopePolicy("reg.example:5000/fleet/test", "off")
    policies = [test_repo, everything, registry]
    assert select_policy(policies, REPO) is registry
    assert select_policy(policies, "reg.example:5000/fleet/test/x") is test_repo
    assert select_policy(policies, "other.example/a") is everything
    assert select_policy([registry], "other.example/a") is None


@given(st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True))
def test_a_scope_always_covers_itself_and_children(path: str) -> None:
    scope = "reg.example/" + path
    assert scope_matches(scope, scope)
    assert scope_matches(scope, scope + "/child")
    assert not scope_matches(scope + "/child", scope)


def test_reference_must_name_the_same_repository() -> None:
    assert reference_matches("REG.example:5000/fleet/pilot", REPO)
    assert not reference_matches("reg.example:5000/fleet/other", REPO)
    assert not reference_matches("reg.example:5000/fleet/pilot:1.0", REPO)
    assert not reference_matches("", REPO)


def sign_payload(priv: keys.PrivateKey, ref: str = REPO, digest: str = DIGEST, ann: dict | None = None) -> tuple:
    payload = cosign.build_simplesigning_payload(ref, digest, ann)
    return payload, keys.sign(priv, payload)


def test_simplesigning_outcomes() -> None:
    assert isinstance(check_simplesigning(*sign_payload(PRIV), policy(), REPO, DIGEST), Accepted)
    cases = {
        "untrusted_key": sign_payload(STRANGER),
        "digest_mismatch": sign_payload(PRIV, digest=OTHER),
        "reference_mismatch": sign_payload(PRIV, ref="reg.example:5000/fleet/other"),
    }
    for code, (payload, sig) in cases.items():
        result = check_simplesigning(payload, sig, policy(), REPO, DIGEST)
        assert isinstance(result, Refused) and result.code == code, (code, result)
    payload, sig = sign_payload(PRIV)
    corrupted = check_simplesigning(payload, sig[:-2] + bytes([sig[-2] ^ 1, sig[-1]]), policy(), REPO, DIGEST)
    assert isinstance(corrupted, Refused) and corrupted.code == "untrusted_key"
    garbage = check_simplesigning(payload, b"\x00garbage", policy(), REPO, DIGEST)
    assert isinstance(garbage, Refused) and garbage.code == "untrusted_key"


def test_required_annotations() -> None:
    need = policy(required_annotations={"env": "prod"})
    ok = check_simplesigning(*sign_payload(PRIV, ann={"env": "prod", "x": "y"}), need, REPO, DIGEST)
    assert isinstance(ok, Accepted)
    missing = check_simplesigning(*sign_payload(PRIV, ann={"env": "dev"}), need, REPO, DIGEST)
    assert isinstance(missing, Refused) and missing.code == "missing_annotation" and "env=prod" in missing.description


def test_several_keys_for_rotation() -> None:
    both = ScopePolicy(REPO, "enforce", (keys.parse_public_key(keys.public_key_pem(STRANGER.public_key()), "new"), KEY))
    result = check_simplesigning(*sign_payload(PRIV), both, REPO, DIGEST)
    assert isinstance(result, Accepted) and result.key.key_id == KEY.key_id


def bundle(priv: keys.PrivateKey, name: str = REPO, digest: str = DIGEST, payload_type: str | None = None) -> bytes:
    statement = cosign.build_statement(name, digest)
    ptype = payload_type or cosign.DSSE_INTOTO_TYPE
    sig = keys.sign(priv, cosign.dsse_pae(cosign.DSSE_INTOTO_TYPE, statement))
    env = cosign.DsseEnvelope(ptype, statement, (cosign.DsseSignature("", sig),))
    return cosign.build_bundle(env, "h")


def test_bundle_outcomes() -> None:
    assert isinstance(check_bundle(bundle(PRIV), policy(), REPO, DIGEST), Accepted)
    for code, data in {
        "untrusted_key": bundle(STRANGER),
        "digest_mismatch": bundle(PRIV, digest=OTHER),
        "reference_mismatch": bundle(PRIV, name="reg.example:5000/elsewhere"),
        "malformed_signature": bundle(PRIV, payload_type="text/plain"),
    }.items():
        result = check_bundle(data, policy(), REPO, DIGEST)
        assert isinstance(result, Refused) and result.code == code, (code, result)
    assert check_bundle(b"{", policy(), REPO, DIGEST).code == "malformed_signature"  # type: ignore[union-attr]


def test_best_refusal_prefers_specific_reasons() -> None:
    assert best_refusal([]).code == "unsigned"
    refusals = [Refused("untrusted_key", "a"), Refused("digest_mismatch", "b"), Refused("malformed_signature", "c")]
    picked = best_refusal(refusals)
    assert picked.code == "digest_mismatch"


def test_policy_fingerprint_changes_with_keys_and_annotations() -> None:
    base = policy()
    assert base.fingerprint() == policy().fingerprint()
    assert base.fingerprint() != policy(required_annotations={"a": "b"}).fingerprint()
    assert base.fingerprint() != ScopePolicy(REPO, "enforce", ()).fingerprint()


def test_stock_cosign_v3_bundle_without_subject_name_needs_explicit_opt_in() -> None:
    import json as _json
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "cosign" / "intoto-statement-cosign-v3.json"
    statement = _json.dumps(_json.loads(fixture.read_text()), separators=(",", ":")).encode()
    digest = "sha256:4c1b2b7a4f5e3d2c1b0a99887766554433221100ffeeddccbbaa998877665544"
    sig = keys.sign(PRIV, cosign.dsse_pae(cosign.DSSE_INTOTO_TYPE, statement))
    env = cosign.DsseEnvelope(cosign.DSSE_INTOTO_TYPE, statement, (cosign.DsseSignature("", sig),))
    data = cosign.build_bundle(env, "h")
    strict = check_bundle(data, policy(), REPO, digest)
    assert isinstance(strict, Refused) and strict.code == "reference_mismatch" and "allow_unnamed" in strict.description
    lenient = ScopePolicy(REPO, "enforce", (KEY,), allow_unnamed_bundles=True)
    assert isinstance(check_bundle(data, lenient, REPO, digest), Accepted)
    assert lenient.fingerprint() != policy().fingerprint()
    assert isinstance(check_bundle(data, lenient, REPO, OTHER), Refused)  # the digest is still checked
