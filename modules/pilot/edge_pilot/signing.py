"""Model file verification: sha256 sidecar and a cosign ``sign-blob`` compatible signature.

``cosign sign-blob --key cosign.key model.onnx`` prints a base64 DER ECDSA-P256 signature over
SHA-256 of the file bytes; the trusted key is a PEM ``PUBLIC KEY``. ``cryptography`` does the
ECDSA check; only the file conventions are ours."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed


class SignatureError(Exception):
    pass


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise SignatureError(f"{path}: cannot load PEM public key ({e})") from e
    return load_public_key_pem(pem, str(path))


def load_public_key_pem(pem: bytes, source: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise SignatureError(f"{source}: cannot load PEM public key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SignatureError(f"{source}: trusted key must be ECDSA P-256")
    return key


def parse_sha256_file(text: str, source: str) -> str:
    """Accepts ``<hex>``, ``<hex>  model.onnx`` (sha256sum) or ``sha256:<hex>``."""
    tok = text.strip().split()[0] if text.strip() else ""
    tok = tok.removeprefix("sha256:").lower()
    if len(tok) != 64 or any(c not in "0123456789abcdef" for c in tok):
        raise SignatureError(f"{source}: not a sha256 hex digest")
    return tok


def verify_model_bytes(data: bytes, sha256_text: str, signature_b64: str, key: ec.EllipticCurvePublicKey, source: str = "model") -> str:
    """Check digest and signature; returns the hex digest. Raises SignatureError naming the problem."""
    want = parse_sha256_file(sha256_text, f"{source}.sha256")
    digest = hashlib.sha256(data)  # hashlib lets other threads run meanwhile (the drive loop)
    got = digest.hexdigest()
    if not hmac.compare_digest(want, got):
        raise SignatureError(f"{source}: sha256 mismatch (file {got[:12]}..., expected {want[:12]}...)")
    try:
        sig = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError(f"{source}.sig: not base64 ({e})") from e
    try:
        # over the digest, not the data: the same signature, without hashing it again holding the GIL
        key.verify(sig, digest.digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature as e:
        raise SignatureError(f"{source}.sig: signature does not verify with the trusted key") from e
    return got


def sign_model_bytes(data: bytes, private_key: ec.EllipticCurvePrivateKey) -> str:
    """Core-side helper (tests, release tooling): base64 DER signature like ``cosign sign-blob``."""
    return base64.b64encode(private_key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
