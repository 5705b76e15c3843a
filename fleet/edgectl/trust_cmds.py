"""edgectl keygen / public-key / sign-image / verify-image / sign-document.

Passphrases never come from the command line (it ends up in shell history and `ps`). One order:
$EDGECTL_KEY_PASSWORD if set, else cosign's $COSIGN_PASSWORD (so CI secrets can be shared), else a
prompt on the terminal. When both variables are set and differ, edgectl says which one it uses;
a wrong passphrase error names where the passphrase came from. Registry passwords likewise from
$EDGECTL_REGISTRY_PASSWORD.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from edge_shared.artifacts.format import build_model_artifact, validate_metadata
from edge_shared.trust.api import ImageRejected
from edge_shared.trust.keys import (
    KeyFileError,
    PrivateKey,
    load_private_key,
    load_public_key,
    public_key_pem,
    write_key_pair,
)
from edge_shared.trust.platforms import Platform, is_index, parse_index, parse_platform
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import RegistryClient, RegistryError, RegistrySettings, parse_reference
from edge_shared.trust.verify import CosignVerifier
from edgectl.documents import sign_document
from edgectl.push import push_and_sign
from edgectl.signing import digests_to_sign, sign_image_bundle, sign_image_legacy

PASSWORD_ENVS = ("EDGECTL_KEY_PASSWORD", "COSIGN_PASSWORD")
COMMANDS = ("keygen", "public-key", "sign-image", "verify-image", "sign-document", "push-model")


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="loopback registry reached over plain HTTP (repeatable)",
    )
    p.add_argument("--ca-file", type=Path, help="PEM CA bundle for the registry's TLS certificate")
    p.add_argument("--username", help="registry user (password from $EDGECTL_REGISTRY_PASSWORD)")


def _annotations(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgectl: annotation {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def add_trust_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kg = sub.add_parser("keygen", help="make a cosign-compatible key pair (cosign.key, cosign.pub)")
    kg.add_argument("--output-key-prefix", type=Path, default=Path("cosign"), help="file prefix (default: cosign)")
    kg.add_argument(
        "--scrypt-n",
        type=int,
        default=32768,
        choices=[32768, 65536],
        help="scrypt cost for the private key encryption (cosign default 32768)",
    )

    pk = sub.add_parser(
        "public-key",
        help="print the public key of a private key (like cosign public-key)",
        description="Decrypt KEY (cosign.key format; passphrase from $EDGECTL_KEY_PASSWORD, else "
        "$COSIGN_PASSWORD, else prompted) and print its public key as PEM (-----BEGIN PUBLIC KEY-----), "
        "the format of cosign.pub and `cosign public-key`.",
    )
    pk.add_argument("--key", type=Path, required=True, help="cosign.key (encrypted private key)")
    pk.add_argument("--outfile", type=Path, help="write the PEM here instead of stdout")

    si = sub.add_parser("sign-image", help="sign an image in its registry (cosign legacy format; --bundle: v3)")
    si.add_argument("reference", help="registry/repository:tag or @sha256:...")
    si.add_argument("--key", type=Path, required=True, help="cosign.key (encrypted private key)")
    si.add_argument("--bundle", action="store_true", help="push a cosign v3 Sigstore bundle (OCI referrer) instead")
    si.add_argument("--both", action="store_true", help="push both the legacy signature and a v3 bundle")
    si.add_argument("-a", "--annotation", action="append", default=[], metavar="KEY=VALUE")
    si.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="for a multi-arch image (index), sign each platform manifest too, like cosign --recursive "
        "(default; --no-recursive signs only the index)",
    )
    _registry_options(si)

    vi = sub.add_parser("verify-image", help="verify an image's signature like the device does")
    vi.add_argument("reference")
    vi.add_argument("--key", type=Path, action="append", required=True, help="cosign.pub (repeatable)")
    vi.add_argument(
        "-a", "--annotation", action="append", default=[], metavar="KEY=VALUE", help="required annotation (repeatable)"
    )
    vi.add_argument(
        "--platform",
        help="os/architecture[/variant] to verify from a multi-arch image, as a device of that platform does "
        "(default: every platform the index lists; a plain image has just one)",
    )
    _registry_options(vi)

    pm = sub.add_parser(
        "push-model",
        help="push a model (ONNX + metadata) as a signed OCI artifact to its registry",
        description="Upload MODEL with its METADATA (the trainer's model.json: input, outputs, dataset.hash, "
        "metrics) as an OCI artifact (artifactType application/vnd.edge-agent.model.v1) to REFERENCE and sign "
        "it like sign-image (legacy cosign signature; --bundle/--both as there). Prints the pinned reference "
        "(registry/repository@sha256:...). verify-image checks it like an image. Exit 0 when pushed and signed.",
    )
    pm.add_argument("reference", help="registry/repository:tag for the model")
    pm.add_argument("--model", type=Path, required=True, help="the ONNX file")
    pm.add_argument("--metadata", type=Path, required=True, help="the model's metadata JSON (model.json)")
    pm.add_argument("--key", type=Path, required=True, help="cosign.key (encrypted private key)")
    pm.add_argument("--bundle", action="store_true", help="sign with a cosign v3 bundle instead")
    pm.add_argument("--both", action="store_true", help="push both the legacy signature and a v3 bundle")
    pm.add_argument("-a", "--annotation", action="append", default=[], metavar="KEY=VALUE")
    pm.add_argument("--json", action="store_true", help="print the result as JSON")
    _registry_options(pm)

    sd = sub.add_parser("sign-document", help="sign a desired document (JSON) for `deploy`")
    sd.add_argument("document", type=Path, help="desired document JSON file (- for stdin)")
    sd.add_argument("--key", type=Path, required=True, help="document signing key (cosign.key format)")
    sd.add_argument("--expires-in", default="30d", help="validity like 12h, 30d; 'never' for no expiry")
    sd.add_argument(
        "--rotate-to",
        type=Path,
        action="append",
        default=[],
        help="public key(s) that become the device's document keys (repeatable; include the current key to keep it)",
    )
    sd.add_argument("-o", "--output", type=Path, help="write the envelope here (default stdout)")


def passphrase_source(environ: Mapping[str, str] | None = None) -> str | None:
    """The variable the key passphrase comes from (PASSWORD_ENVS order), or None for the prompt."""
    env = os.environ if environ is None else environ
    return next((name for name in PASSWORD_ENVS if name in env), None)


def key_passphrase(confirm: bool = False) -> bytes:
    return _passphrase(confirm)[0]


def _passphrase(confirm: bool = False) -> tuple[bytes, str]:
    """The passphrase and where it came from ("$EDGECTL_KEY_PASSWORD", ..., "the prompt")."""
    name = passphrase_source()
    if name is not None:
        others = [o for o in PASSWORD_ENVS if o != name and o in os.environ and os.environ[o] != os.environ[name]]
        if others:
            print(f"edgectl: {name} and {', '.join(others)} are both set and differ; using {name}", file=sys.stderr)
        return os.environ[name].encode(), f"${name}"
    if not sys.stdin.isatty():
        raise SystemExit(
            f"edgectl: set {PASSWORD_ENVS[0]} (or {PASSWORD_ENVS[1]}): no terminal to prompt for the key passphrase"
        )
    first = getpass.getpass("Enter passphrase for private key: ")
    if confirm and getpass.getpass("Enter again: ") != first:
        raise SystemExit("edgectl: passphrases do not match")
    return first.encode(), "the prompt"


def load_signing_key(path: Path) -> PrivateKey:
    """Load an encrypted private key; a passphrase error says where the passphrase came from."""
    passphrase, source = _passphrase()
    try:
        return load_private_key(path, passphrase)
    except KeyFileError as exc:
        if "passphrase" not in str(exc):
            raise
        unused = [f"${o}" for o in PASSWORD_ENVS if f"${o}" != source and o in os.environ]
        note = f" ({', '.join(unused)} is also set and was not used)" if unused else ""
        raise KeyFileError(f"{exc}; the passphrase came from {source}{note}") from None


def _client(args: argparse.Namespace, registry: str) -> RegistryClient:
    creds = {}
    if args.username:
        password = os.environ.get("EDGECTL_REGISTRY_PASSWORD")
        if password is None:
            password = getpass.getpass(f"Password for {args.username}@{registry}: ")
        creds[registry] = (args.username, password)
    return RegistryClient(
        RegistrySettings(insecure_registries=frozenset(args.insecure_registry), ca_file=args.ca_file, credentials=creds)
    )


def parse_duration(text: str) -> timedelta | None:
    if text == "never":
        return None
    match = re.fullmatch(r"(\d+)([smhd])", text)
    if not match:
        raise SystemExit(f"edgectl: --expires-in {text!r}: expected like 90m, 12h, 30d or never")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def _push_model(args: argparse.Namespace) -> int:
    ref = parse_reference(args.reference)
    try:
        onnx = args.model.read_bytes()
        meta_raw = json.loads(args.metadata.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{exc.filename}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.metadata}: not JSON: {exc}") from None
    if not isinstance(meta_raw, dict):
        raise ValueError(f"{args.metadata}: expected a JSON object")
    metadata = validate_metadata(meta_raw, str(args.metadata))
    key = load_signing_key(args.key)
    artifact = build_model_artifact(onnx, metadata)
    pushed = push_and_sign(
        _client(args, ref.registry),
        ref,
        artifact,
        key,
        _annotations(args.annotation),
        legacy=args.both or not args.bundle,
        bundle=args.both or args.bundle,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "reference": pushed.reference,
                    "digest": pushed.digest,
                    "layer": artifact.layers[0][0].digest,
                    "uploadedBytes": pushed.bytes_uploaded,
                    "signatures": [s.format for s in pushed.signatures],
                }
            )
        )
    else:
        for s in pushed.signatures:
            print(f"signed {ref.repository}@{s.digest} ({s.format}: {s.tag_or_digest})")
        print(
            f"pushed {pushed.reference} (model layer {artifact.layers[0][0].digest}, "
            f"{pushed.bytes_uploaded} bytes uploaded)"
        )
    return 0


def run_trust_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (KeyFileError, ValueError) as exc:
        print(f"edgectl {args.command}: {exc}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"edgectl {args.command}: registry: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "keygen":
        priv, pub = write_key_pair(args.output_key_prefix, key_passphrase(confirm=True), n=args.scrypt_n)
        print(f"Private key written to {priv}\nPublic key written to {pub}")
        return 0
    if args.command == "public-key":
        pem = public_key_pem(load_signing_key(args.key).public_key())
        if args.outfile:
            args.outfile.write_bytes(pem)
            print(f"Public key written to {args.outfile}", file=sys.stderr)
        else:
            sys.stdout.write(pem.decode())
        return 0
    if args.command == "sign-image":
        ref = parse_reference(args.reference)
        key = load_signing_key(args.key)
        client = _client(args, ref.registry)
        annotations = _annotations(args.annotation)
        results = []
        for digest in digests_to_sign(client, ref, args.recursive):
            if args.both or not args.bundle:
                results.append(sign_image_legacy(client, ref, key, annotations, digest=digest))
            if args.both or args.bundle:
                results.append(sign_image_bundle(client, ref, key, annotations, digest=digest))
        for r in results:
            print(f"signed {ref.repository}@{r.digest} ({r.format}: {r.tag_or_digest})")
        return 0
    if args.command == "push-model":
        return _push_model(args)
    if args.command == "verify-image":
        ref = parse_reference(args.reference)
        keys = tuple(load_public_key(p) for p in args.key)
        policy = ScopePolicy(ref.repository, "enforce", keys, _annotations(args.annotation))
        client = _client(args, ref.registry)
        if args.platform:
            platforms: list[Platform | None] = [parse_platform(args.platform)]
        else:
            top = client.get_manifest(ref)
            listed = {e.platform for e in parse_index(top.body) if e.platform is not None} if is_index(
                top.media_type, top.body
            ) else set()
            platforms = sorted(listed, key=str) if listed else [None]
        failed = 0
        for platform in platforms:
            verifier = CosignVerifier([policy], client, platform=platform)
            try:
                verified = asyncio.run(verifier.verify(args.reference))
            except ImageRejected as exc:
                shown = f" ({platform})" if platform else ""
                print(f"REFUSED {exc.reference}{shown}: {exc.code}: {exc.description}")
                failed += 1
                continue
            origin = f" {verified.platform} from index {verified.index_digest}" if verified.index_digest else ""
            print(f"OK {verified.repository}@{verified.digest}{origin} signed by key {verified.signer}")
        return 1 if failed else 0
    if args.command == "sign-document":
        raw = sys.stdin.buffer.read() if str(args.document) == "-" else args.document.read_bytes()
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{args.document}: not JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("version"), int):
            raise ValueError(f"{args.document}: expected a JSON object with an integer version")
        rotate = [load_public_key(p).pem() for p in args.rotate_to]
        envelope = sign_document(
            document,
            load_signing_key(args.key),
            expires_in=parse_duration(args.expires_in),
            rotate_to=rotate or None,
        )
        if args.output:
            args.output.write_bytes(envelope + b"\n")
        else:
            sys.stdout.write(envelope.decode() + "\n")
        return 0
    raise ValueError(f"unknown command {args.command}")
