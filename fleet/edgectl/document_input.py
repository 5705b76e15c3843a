"""What `edgectl deploy` and `edgectl rollout start` read from the operator: the deployment (and
properties) file, TOML or JSON, and the signing key that turns it into a signed document."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"edgectl: {path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"edgectl: {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"edgectl: {path}: expected an object at the top level")
    return data


def document_signer(key_path: Path, expires_in: str, rotate_to: Sequence[Path] = ()) -> tuple[Any, Any]:
    """(bytes -> signed envelope bytes, the public key that verifies them), with the key loaded (and
    its passphrase asked) once."""
    from edge_shared.trust.keys import KeyFileError, load_public_key, parse_public_key, public_key_pem
    from edgectl.documents import sign_document
    from edgectl.trust_cmds import load_signing_key, parse_duration

    try:
        key = load_signing_key(key_path)
        public = parse_public_key(public_key_pem(key.public_key()), str(key_path))
    except KeyFileError as exc:  # unreadable file, not a private key
        raise SystemExit(f"edgectl: --key {exc}") from None
    expires_s = parse_duration(expires_in)
    rotate_pems = [load_public_key(p).pem() for p in rotate_to] or None

    def sign(payload: bytes) -> bytes:
        return sign_document(json.loads(payload), key, expires_in=expires_s, rotate_to=rotate_pems)

    return sign, public
