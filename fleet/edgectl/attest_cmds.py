"""`edgectl enroll DEVICE` and `edgectl attest DEVICE`: the verifier half of TPM attestation.

Enrollment records live in a fleet-side folder (default ~/.config/edgectl/attestation, or
--records / $EDGECTL_ATTESTATION_DIR), one JSON file per device: EK and AK public parts, EK
certificate when the TPM has one, golden PCR values and the last counters seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_shared.attestation import DEFAULT_PCRS, DeviceIdentity, ak_name, b64, decode_evidence
from edge_shared.names import is_device_id
from edge_shared.protocol import CommandFailed
from edgectl.attestation.challenge import (
    ak_attributes_problem,
    check_challenge_answer,
    ek_certificate_problem,
    make_challenge,
)
from edgectl.attestation.ima import Allowlist
from edgectl.attestation.verify import Counters, Expectations, VerificationResult, verify_quote

Transport = Callable[[str, str, Mapping[str, Any]], Awaitable[dict[str, Any]]]
DEFAULT_GOLDEN = (0, 1, 2, 3, 4, 5, 6, 7)
NONCE_BYTES = 32


class AttestationFailure(Exception):
    """Enrollment or attestation could not be done; the message says why."""


# --------------------------------------------------------------------------- records


@dataclass
class EnrollmentRecord:
    device: str
    identity: DeviceIdentity
    enrolled_at: str
    golden_pcrs: dict[int, bytes] = field(default_factory=dict)
    last_counters: Counters | None = None
    image_pcr: int = 23

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "enrolled_at": self.enrolled_at,
            "ek_type": self.identity.ek_type,
            "ek_public": b64(self.identity.ek_public),
            "ek_cert": b64(self.identity.ek_cert) if self.identity.ek_cert else None,
            "ak_public": b64(self.identity.ak_public),
            "ak_name": ak_name(self.identity.ak_public).hex(),
            "image_pcr": self.image_pcr,
            "golden_pcrs": {"sha256": {str(i): v.hex() for i, v in sorted(self.golden_pcrs.items())}},
            "last_counters": self.last_counters.as_dict() if self.last_counters else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> EnrollmentRecord:
        try:
            identity = DeviceIdentity.from_wire(dict(data))
            golden = {int(k): bytes.fromhex(v) for k, v in data.get("golden_pcrs", {}).get("sha256", {}).items()}
            counters = Counters.from_dict(data["last_counters"]) if data.get("last_counters") else None
            return cls(str(data["device"]), identity, str(data.get("enrolled_at", "")), golden, counters,
                       int(data.get("image_pcr", 23)))
        except (KeyError, TypeError, ValueError) as exc:
            raise AttestationFailure(f"{source}: broken enrollment record ({exc})") from None


def records_dir(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("EDGECTL_ATTESTATION_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "edgectl" / "attestation"


def record_path(directory: Path, device: str) -> Path:
    return directory / f"{device}.json"


def load_record(directory: Path, device: str) -> EnrollmentRecord:
    path = record_path(directory, device)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttestationFailure(f"device {device} is not enrolled (no {path}); run: edgectl enroll {device}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise AttestationFailure(f"{path}: cannot read enrollment record ({exc})") from None
    return EnrollmentRecord.from_json(data, str(path))


def save_record(directory: Path, record: EnrollmentRecord) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = record_path(directory, record.device)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a crash leaves the old record
    return path


# --------------------------------------------------------------------------- policies


def load_golden_policy(path: Path) -> dict[int, bytes]:
    """``{"sha256": {"0": "<hex>", ...}}``"""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {int(k): bytes.fromhex(v) for k, v in data["sha256"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AttestationFailure(f"{path}: expected {{\"sha256\": {{\"PCR\": \"hex\"}}}} ({exc})") from None


def load_allowlist(path: Path) -> Allowlist:
    try:
        return Allowlist.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise AttestationFailure(str(exc) if isinstance(exc, ValueError) else f"{path}: {exc}") from None


def deployment_images(doc: Any, source: str = "deployment") -> dict[str, set[str]]:
    """module -> image digests from a deployment document: ``{"modules": {NAME: {"image":
    "repo@sha256:...", "digest": "sha256:..."}}}`` (a list of modules with "name" works too)."""
    modules = doc.get("modules") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and modules is None and isinstance(doc.get("deployment"), dict):
        modules = doc["deployment"].get("modules")
    if isinstance(modules, list):
        modules = {str(m.get("name")): m for m in modules if isinstance(m, dict)}
    if not isinstance(modules, dict):
        raise AttestationFailure(f"{source}: expected a 'modules' object (module name -> image)")
    out: dict[str, set[str]] = {}
    for name, spec in modules.items():
        digests = set()
        if isinstance(spec, dict):
            for key in ("digest", "image"):
                value = spec.get(key)
                if isinstance(value, str) and "sha256:" in value:
                    digests.add("sha256:" + value.rsplit("sha256:", 1)[1])
        elif isinstance(spec, str) and "sha256:" in spec:
            digests.add("sha256:" + spec.rsplit("sha256:", 1)[1])
        if not digests:
            raise AttestationFailure(f"{source}: modules.{name}: no image digest (expected image repo@sha256:...)")
        out[str(name)] = digests
    return out


# --------------------------------------------------------------------------- flows


async def enroll_device(
    transport: Transport, device: str, golden: tuple[int, ...] = DEFAULT_GOLDEN, image_pcr: int = 23,
    ek_ca: bytes | None = None, require_ek_cert: bool = False,
) -> EnrollmentRecord:
    """Register the device's EK and AK, prove the AK is in the EK's TPM, record golden PCRs.
    The EK certificate, when the TPM has one, must match the EK (and be issued by `ek_ca`)."""
    identity = DeviceIdentity.from_wire(await transport(device, "attest_enroll", {}))
    ak_problem = ak_attributes_problem(identity.ak_public)
    if ak_problem:
        raise AttestationFailure(ak_problem)
    if identity.ek_cert is not None or require_ek_cert or ek_ca is not None:
        problem = ek_certificate_problem(identity, ek_ca)
        if problem:
            raise AttestationFailure(f"EK certificate check failed: {problem}")
    challenge = make_challenge(identity)
    try:
        answer = await transport(device, "attest_activate", challenge.to_wire())
    except CommandFailed as exc:
        raise AttestationFailure(f"the AK is not in the same TPM as the EK: {exc.description}") from None
    if not check_challenge_answer(challenge, answer):
        raise AttestationFailure("the AK is not in the same TPM as the EK: the device returned the wrong secret")
    record = EnrollmentRecord(device, identity, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              image_pcr=image_pcr)
    pcrs = tuple(sorted({*golden, 10, image_pcr}))
    result, evidence_pcrs = await _attest_once(transport, record, pcrs, Expectations(b"", pcrs, identity.ak_public))
    trusted = {"ak_signature", "nonce", "pcr_selection", "pcr_digest"}
    bad = [c for c in result.checks if c.name in trusted and c.status != "pass"]
    if bad:
        raise AttestationFailure("first quote failed: " + "; ".join(f"{c.name}: {c.detail}" for c in bad))
    record.golden_pcrs = {i: evidence_pcrs[i] for i in golden}
    record.last_counters = result.counters
    return record


async def _attest_once(
    transport: Transport, record: EnrollmentRecord, pcrs: tuple[int, ...], expect: Expectations,
    save_dir: Path | None = None,
) -> tuple[VerificationResult, dict[int, bytes]]:
    nonce = secrets.token_bytes(NONCE_BYTES)
    response = await transport(record.device, "attest", {"nonce": nonce.hex(), "pcrs": list(pcrs)})
    try:
        evidence = decode_evidence(response)
    except ValueError as exc:
        raise AttestationFailure(f"device {record.device} sent a malformed answer: {exc}") from None
    if save_dir is not None:
        save_evidence(save_dir, record, evidence.attest, evidence.signature, evidence.pcrs, pcrs, nonce, response)
    expect = Expectations(
        nonce=nonce, pcrs=pcrs, ak_public=expect.ak_public, last_counters=expect.last_counters,
        golden_pcrs=expect.golden_pcrs, ima_allowlist=expect.ima_allowlist, ima_required=expect.ima_required,
        image_pcr=expect.image_pcr, deployment_images=expect.deployment_images,
    )
    return verify_quote(evidence, expect), dict(evidence.pcrs)


def save_evidence(directory: Path, record: EnrollmentRecord, attest: bytes, signature: bytes,
                  pcrs: Mapping[int, bytes], selection: tuple[int, ...], nonce: bytes,
                  response: Mapping[str, Any]) -> None:
    """The quote as files for `tpm2_checkquote -u ak.pem -m quote.msg -s quote.sig -f quote.pcrs
    -g sha256 -q NONCE` (an independent check with tpm2-tools)."""
    from tpm2_pytss.types import TPM2B_PUBLIC

    directory.mkdir(parents=True, exist_ok=True)
    public, _ = TPM2B_PUBLIC.unmarshal(record.identity.ak_public)
    (directory / "ak.pem").write_bytes(bytes(public.to_pem()))
    (directory / "quote.msg").write_bytes(attest)
    (directory / "quote.sig").write_bytes(signature)
    (directory / "quote.pcrs").write_bytes(tools_pcr_file(pcrs, selection))
    (directory / "nonce.hex").write_text(nonce.hex())
    (directory / "pcr-list.txt").write_text("sha256:" + ",".join(map(str, sorted(selection))))
    (directory / "response.json").write_text(json.dumps(dict(response), indent=2))


def tools_pcr_file(pcrs: Mapping[int, bytes], selection: tuple[int, ...]) -> bytes:
    """PCR values in tpm2-tools' "serialized" format (what `tpm2_quote -o` writes and
    `tpm2_checkquote -f` reads): the in-memory C structs, little-endian. TPML_PCR_SELECTION
    (count, 16 x {hash u16, sizeofSelect u8, pcrSelect[4], pad}), then the number of TPML_DIGEST
    lists, then each list (count, 8 x {size u16, buffer[64]}). Only the SHA-256 bank."""
    import struct

    bitmap = bytearray(4)
    for index in selection:
        bitmap[index // 8] |= 1 << (index % 8)
    out = struct.pack("<I", 1) + struct.pack("<HB4sx", 0x000B, 3, bytes(bitmap)) + bytes(8 * 15)
    values = [pcrs[i] for i in sorted(selection)]
    chunks = [values[i : i + 8] for i in range(0, len(values), 8)]
    out += struct.pack("<I", len(chunks))
    for chunk in chunks:
        out += struct.pack("<I", len(chunk))
        for slot in range(8):
            value = chunk[slot] if slot < len(chunk) else b""
            out += struct.pack("<H", len(value)) + value.ljust(64, b"\0")
    return out


async def attest_device(
    transport: Transport,
    record: EnrollmentRecord,
    pcrs: tuple[int, ...] | None = None,
    golden: Mapping[int, bytes] | None = None,
    allowlist: Allowlist | None = None,
    require_ima: bool = False,
    deployment: Mapping[str, set[str]] | None = None,
    save_dir: Path | None = None,
) -> VerificationResult:
    """Ask for a fresh quote and verify it. Updates record.last_counters when the quote is
    authentic and fresh (the caller saves the record)."""
    selection = tuple(sorted(set(pcrs or (*DEFAULT_PCRS[:-1], record.image_pcr))))
    golden_values = dict(golden if golden is not None else record.golden_pcrs)
    expect = Expectations(
        nonce=b"", pcrs=selection, ak_public=record.identity.ak_public, last_counters=record.last_counters,
        golden_pcrs={i: v for i, v in golden_values.items() if i in selection},
        ima_allowlist=allowlist, ima_required=require_ima, image_pcr=record.image_pcr,
        deployment_images={m: frozenset(d) for m, d in deployment.items()} if deployment is not None else None,
    )
    result, _ = await _attest_once(transport, record, selection, expect, save_dir)
    status = {c.name: c.status for c in result.checks}
    if result.counters and all(status.get(n) == "pass" for n in ("ak_signature", "nonce", "counters")):
        record.last_counters = result.counters
    return result


# --------------------------------------------------------------------------- CLI


def add_parsers(sub: Any, broker: argparse.ArgumentParser) -> None:
    """`broker`: the broker options every edgectl command shares (fleet/connect.py)."""
    mqtt = argparse.ArgumentParser(add_help=False, parents=[broker])
    g = mqtt.add_argument_group("attestation")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the device (default 30)")
    g.add_argument("--records", type=Path, help="folder of enrollment records (default ~/.config/edgectl/attestation)")

    enroll = sub.add_parser(
        "enroll", parents=[mqtt], help="register a device's TPM keys (EK, AK) and golden PCR values",
        description="Read the device's EK and AK, prove the AK is in the same TPM as the EK "
        "(MakeCredential/ActivateCredential), take a first quote and record the golden PCR values.",
    )
    enroll.add_argument("device", help="device id")
    enroll.add_argument("--golden-pcrs", default="0-7", help="PCRs whose current values become golden (default 0-7)")
    enroll.add_argument("--force", action="store_true", help="replace an existing enrollment record")
    enroll.add_argument("--ek-ca", type=Path, help="PEM bundle of the TPM vendor's CAs; the EK certificate must be "
                        "issued by one of them (implies --require-ek-cert)")
    enroll.add_argument("--require-ek-cert", action="store_true", help="refuse a TPM without an EK certificate")

    attest = sub.add_parser(
        "attest", parents=[mqtt], help="ask a device for a TPM quote and verify it",
        description="Send a fresh nonce, get a quote over the PCRs plus the IMA and module image logs, and "
        "verify: AK signature, nonce, PCR digest, counters, golden PCRs, IMA replay and allowlist, module "
        "image log against the deployment. Exit 0 when every check passes, 1 otherwise.",
    )
    attest.add_argument("device", help="device id")
    attest.add_argument("--pcrs", help="PCR list like 0-7,10,23 (default 0-7,10 and the image PCR)")
    attest.add_argument("--policy", type=Path, help="golden PCR values file {\"sha256\": {\"0\": HEX}} "
                        "(default: recorded at enrollment)")
    attest.add_argument("--allowlist", type=Path, help="IMA allowlist {\"digests\": {PATH: [SHA256 HEX]}}")
    attest.add_argument("--require-ima", action="store_true", help="fail when the device sends no IMA list")
    attest.add_argument("--deployment", type=Path, action="append", default=[],
                        help="deployment JSON whose module images may run (repeat to allow several)")
    attest.add_argument("--image", action="append", default=[], metavar="MODULE=sha256:HEX",
                        help="an allowed module image (repeatable; adds to --deployment)")
    attest.add_argument("--save-evidence", type=Path, help="write the quote files for tpm2_checkquote here")
    attest.add_argument("--json", action="store_true", help="print the result as JSON")


def parse_pcr_list(text: str) -> tuple[int, ...]:
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise AttestationFailure(f"PCR list {text!r}: expected numbers and ranges like 0-7,10,23") from None
    if not out or min(out) < 0 or max(out) > 23:
        raise AttestationFailure(f"PCR list {text!r}: PCRs are 0-23")
    return tuple(sorted(out))


def _transport(args: argparse.Namespace) -> Transport:
    """Commands go through the same fleet client (config file, TLS, response topic) as edgectl call."""
    from edge_shared.protocol import command_answer_result
    from edgectl.client import FleetError
    from edgectl.connect import fleet_client

    async def send(device: str, command: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        try:
            async with fleet_client(args) as fleet:
                answer = await fleet.call(device, command, dict(payload), timeout=args.timeout)
        except FleetError as exc:
            raise TimeoutError(str(exc)) from None
        result = command_answer_result(answer)
        return result if isinstance(result, dict) else {"value": result}

    return send


def _check_device(device: str) -> None:

    if not is_device_id(device):
        raise AttestationFailure(f"device id {device!r} is not valid")


def cmd_enroll(args: argparse.Namespace) -> int:
    try:
        _check_device(args.device)
        directory = records_dir(args.records)
        if record_path(directory, args.device).exists() and not args.force:
            print(f"edgectl: {args.device} is already enrolled ({record_path(directory, args.device)}); "
                  "use --force to replace it", file=sys.stderr)
            return 2
        ek_ca = args.ek_ca.read_bytes() if args.ek_ca else None
        record = asyncio.run(enroll_device(_transport(args), args.device, parse_pcr_list(args.golden_pcrs),
                                           ek_ca=ek_ca, require_ek_cert=args.require_ek_cert))
        path = save_record(directory, record)
    except (AttestationFailure, CommandFailed, TimeoutError, OSError) as exc:
        print(f"edgectl: enrollment of {args.device} failed: {exc}", file=sys.stderr)
        return 1
    cert = "EK certificate stored" if record.identity.ek_cert else "no EK certificate in the TPM's NV"
    print(f"enrolled {args.device}: AK {ak_name(record.identity.ak_public).hex()[:20]}... proven in the EK's TPM; "
          f"{cert}; golden PCRs {','.join(map(str, sorted(record.golden_pcrs)))}; record {path}")
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    try:
        _check_device(args.device)
        directory = records_dir(args.records)
        record = load_record(directory, args.device)
        golden = load_golden_policy(args.policy) if args.policy else None
        allowlist = load_allowlist(args.allowlist) if args.allowlist else None
        deployment: dict[str, set[str]] | None = None
        for path in args.deployment:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise AttestationFailure(f"{path}: cannot read deployment ({exc})") from None
            for module, digests in deployment_images(doc, str(path)).items():
                (deployment := deployment or {}).setdefault(module, set()).update(digests)
        for item in args.image:
            module, sep, digest = item.partition("=")
            if not sep or not digest.startswith("sha256:"):
                raise AttestationFailure(f"--image {item!r}: expected MODULE=sha256:HEX")
            (deployment := deployment or {}).setdefault(module, set()).add(digest)
        pcrs = parse_pcr_list(args.pcrs) if args.pcrs else None
        result = asyncio.run(attest_device(_transport(args), record, pcrs, golden, allowlist, args.require_ima,
                                           deployment, args.save_evidence))
        save_record(directory, record)
    except (AttestationFailure, CommandFailed, TimeoutError, OSError) as exc:
        print(f"edgectl: attestation of {args.device} failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"device": args.device, **result.as_dict()}, indent=2))
    else:
        for check in result.checks:
            print(f"{check.status.upper():4}  {check.name:17} {check.detail}")
        verdict = "PASSED" if result.passed else "FAILED: " + ", ".join(result.failed_names())
        print(f"\nattestation of {args.device}: {verdict}")
    return 0 if result.passed else 1


COMMANDS = {"enroll": cmd_enroll, "attest": cmd_attest}
