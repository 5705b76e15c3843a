"""Key files in cosign's formats, and sign/verify with them.

Public keys: PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo DER), exactly what ``cosign generate-key-pair``
writes to cosign.pub. Private keys: PEM ``ENCRYPTED SIGSTORE PRIVATE KEY`` (older cosign:
``ENCRYPTED COSIGN PRIVATE KEY``) whose body is the JSON envelope of go-securesystemslib's
``encrypted`` package:

    {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"<b64 32 bytes>"},
     "cipher":{"name":"nacl/secretbox","nonce":"<b64 24 bytes>"},
     "ciphertext":"<b64 secretbox(PKCS#8 DER)>"}

scrypt is hashlib's (OpenSSL) and secretbox is PyNaCl's; the envelope itself is 30 lines of
JSON that no library writes in this shape, hence by hand. Key types: cosign generates ECDSA
P-256; keys imported into cosign may also be P-384/P-521, Ed25519 or RSA, which verify too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PUBLIC_PEM_TYPE = "PUBLIC KEY"
PRIVATE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
LEGACY_PRIVATE_PEM_TYPES = ("ENCRYPTED COSIGN PRIVATE KEY",)
SCRYPT_N_DEFAULT = 32768
SCRYPT_R = 8
SCRYPT_P = 1
# Refuse parameters that would make loading a key a memory/CPU bomb (128*r*N bytes).
SCRYPT_N_MAX = 1 << 20
SALT_BYTES = 32
# nacl.secret.SecretBox.NONCE_SIZE and KEY_SIZE. PyNaCl is imported only where a private key is
# encrypted or decrypted (edgectl): the agent never does, and PyNaCl costs it 1.1 MB of RSS.
NONCE_BYTES = 24
BOX_KEY_BYTES = 32

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

_EC_HASH: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


class KeyFileError(ValueError):
    """A key file cannot be used; the message names the file and the problem, never the secret."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key we trust, with a stable id (sha256 of its DER) and where it came from."""

    key_id: str  # hex sha256 of SubjectPublicKeyInfo DER
    public_key: PublicKey
    source: str  # file path or "state.db" / "document"

    @property
    def short_id(self) -> str:
        return self.key_id[:16]

    @property
    def algorithm(self) -> str:
        return key_algorithm(self.public_key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        return verify_signature(self.public_key, signature, data)

    def pem(self) -> bytes:
        return public_key_pem(self.public_key)


# --------------------------------------------------------------------------- public keys


def public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> str:
    return hashlib.sha256(public_key_der(key)).hexdigest()


def key_algorithm(key: PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return f"rsa-{key.key_size}"


def parse_public_key(data: bytes, source: str) -> TrustedKey:
    """A PEM ``PUBLIC KEY``; refuses private keys, certificates and unsupported curves."""
    text = data.strip()
    if not text.startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise KeyFileError(f"{source}: not a PEM PUBLIC KEY (expected a cosign.pub file)")
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source}: cannot parse public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_HASH:
            raise KeyFileError(f"{source}: unsupported curve {key.curve.name}; expected P-256, P-384 or P-521")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyFileError(f"{source}: RSA key of {key.key_size} bits is too small; expected at least 2048")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{source}: unsupported key type {type(key).__name__}")
    return TrustedKey(key_id(key), key, source)


def load_public_key(path: Path) -> TrustedKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public key: {exc.strerror}") from None
    return parse_public_key(data, str(path))


# --------------------------------------------------------------------------- signatures


def verify_signature(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """cosign's conventions: ECDSA ASN.1 DER over SHA-2 matching the curve, Ed25519 pure,
    RSA PKCS#1 v1.5 with SHA-256."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            decode_dss_signature(signature)  # malformed DER is a failed signature, not a crash
            key.verify(signature, data, ec.ECDSA(_EC_HASH[key.curve.name]()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_EC_HASH[key.curve.name]()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


# --------------------------------------------------------------------------- encrypted private keys


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """What `cosign generate-key-pair` makes: ECDSA P-256."""
    return ec.generate_private_key(ec.SECP256R1())


def _pem(pem_type: str, body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {pem_type}-----\n" + "\n".join(lines) + f"\n-----END {pem_type}-----\n").encode("ascii")


def _unpem(data: bytes, source: str) -> tuple[str, bytes]:
    text = data.decode("ascii", errors="replace").strip().splitlines()
    if len(text) < 2 or not text[0].startswith("-----BEGIN ") or not text[-1].startswith("-----END "):
        raise KeyFileError(f"{source}: not a PEM file")
    pem_type = text[0].removeprefix("-----BEGIN ").removesuffix("-----")
    if text[-1] != f"-----END {pem_type}-----":
        raise KeyFileError(f"{source}: PEM BEGIN/END lines do not match")
    try:
        return pem_type, base64.b64decode("".join(text[1:-1]), validate=True)
    except binascii.Error:
        raise KeyFileError(f"{source}: PEM body is not base64") from None


def _scrypt_key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=BOX_KEY_BYTES)


def encrypt_private_key(
    key: PrivateKey,
    passphrase: bytes,
    *,
    n: int = SCRYPT_N_DEFAULT,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """The PEM file `cosign generate-key-pair` writes (cosign.key)."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    import nacl.secret

    box = nacl.secret.SecretBox(_scrypt_key(passphrase, salt, n, SCRYPT_R, SCRYPT_P))
    ciphertext = box.encrypt(der, nonce).ciphertext  # Poly1305 tag + XSalsa20 stream, as Go's secretbox.Seal
    envelope = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": n, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return _pem(PRIVATE_PEM_TYPE, json.dumps(envelope, separators=(",", ":")).encode())


def _b64_field(obj: object, name: str, source: str, size: int | None = None) -> bytes:
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        raise KeyFileError(f"{source}: encrypted key field {name} is missing or not a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise KeyFileError(f"{source}: encrypted key field {name} is not base64") from None
    if size is not None and len(raw) != size:
        raise KeyFileError(f"{source}: encrypted key field {name} has {len(raw)} bytes; expected {size}")
    return raw


def decrypt_private_key(data: bytes, passphrase: bytes, source: str = "private key") -> PrivateKey:
    pem_type, body = _unpem(data, source)
    if pem_type != PRIVATE_PEM_TYPE and pem_type not in LEGACY_PRIVATE_PEM_TYPES:
        raise KeyFileError(f"{source}: PEM type {pem_type!r}; expected {PRIVATE_PEM_TYPE}")
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{source}: encrypted key body is not JSON") from None
    if not isinstance(envelope, dict) or set(envelope) != {"kdf", "cipher", "ciphertext"}:
        raise KeyFileError(f"{source}: encrypted key must have exactly kdf, cipher, ciphertext")
    kdf, cipher = envelope["kdf"], envelope["cipher"]
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise KeyFileError(f"{source}: kdf.name must be scrypt")
    if not isinstance(cipher, dict) or cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(f"{source}: cipher.name must be nacl/secretbox")
    params = kdf.get("params")
    if not isinstance(params, dict) or set(params) != {"N", "r", "p"}:
        raise KeyFileError(f"{source}: kdf.params must have N, r, p")
    n, r, p = params["N"], params["r"], params["p"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
        raise KeyFileError(f"{source}: kdf.params N, r, p must be integers")
    if n < 2 or n & (n - 1) or n > SCRYPT_N_MAX or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise KeyFileError(f"{source}: kdf.params N={n} r={r} p={p} out of range; expected N a power of two <= 2^20")
    salt = _b64_field(kdf, "salt", source)
    nonce = _b64_field(cipher, "nonce", source, NONCE_BYTES)
    ciphertext = _b64_field(envelope, "ciphertext", source)
    import nacl.exceptions
    import nacl.secret

    box = nacl.secret.SecretBox(_scrypt_key(passphrase, salt, n, r, p))
    try:
        der = box.decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{source}: wrong passphrase (or the key file is corrupted)") from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source}: decrypted key is not PKCS#8: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"{source}: unsupported private key type {type(key).__name__}")
    return key


def load_private_key(path: Path, passphrase: bytes) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key: {exc.strerror}") from None
    return decrypt_private_key(data, passphrase, str(path))


def write_key_pair(prefix: Path, passphrase: bytes, *, n: int = SCRYPT_N_DEFAULT) -> tuple[Path, Path]:
    """cosign.key (0600) and cosign.pub beside it; refuses to overwrite."""
    priv_path, pub_path = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p}: already exists; refusing to overwrite a key")
    key = generate_private_key()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(encrypt_private_key(key, passphrase, n=n))
    pub_path.write_bytes(public_key_pem(key.public_key()))
    return priv_path, pub_path
