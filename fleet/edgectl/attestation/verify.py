"""The verifier: decides whether a quote and its logs prove the expected device state.

Pure: evidence and expectations in, a result naming every check out. Every check runs (one
failure does not hide the others) unless it cannot: without a valid signature nothing in the
quote is trusted, so the dependent checks report "not checked". Structures are decoded with
tpm2-pytss's marshalling code; signatures are checked with `cryptography`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_shared.attestation import BANK, ZERO_PCR, Evidence, replay_image_log
from edgectl.attestation.bootlog import BOOT_PCRS, BootLogError, boot_log_problems
from edgectl.attestation.ima import IMA_PCR, Allowlist, ImaParseError, parse_ima_list, replay

# Stable check names (the CLI prints them; docs/attestation.md explains each).
CHECKS = (
    "attest_format",
    "ak_signature",
    "nonce",
    "pcr_selection",
    "pcr_digest",
    "counters",
    "golden_pcrs",
    "boot_log_replay",
    "ima_entries",
    "ima_replay",
    "ima_allowlist",
    "image_log_replay",
    "image_deployment",
)


@dataclass(frozen=True)
class Counters:
    clock: int
    reset_count: int
    restart_count: int

    def as_dict(self) -> dict[str, int]:
        return {"clock": self.clock, "resetCount": self.reset_count, "restartCount": self.restart_count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counters:
        return cls(int(data["clock"]), int(data["resetCount"]), int(data["restartCount"]))




@dataclass(frozen=True)
class Expectations:
    nonce: bytes
    pcrs: Sequence[int]
    ak_public: bytes  # marshalled TPM2B_PUBLIC recorded at enrollment
    last_counters: Counters | None = None
    golden_pcrs: Mapping[int, bytes] = field(default_factory=dict)
    ima_allowlist: Allowlist | None = None
    ima_required: bool = False
    image_pcr: int = 23
    # module -> allowed image digests ("sha256:..."); None: not checked
    deployment_images: Mapping[str, frozenset[str]] | None = None


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str


@dataclass(frozen=True)
class VerificationResult:
    checks: tuple[CheckOutcome, ...]
    counters: Counters | None  # from an authentic quote only

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.status == "fail"]

    def failed_names(self) -> list[str]:
        return [c.name for c in self.failures]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed_names(),
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
            "counters": self.counters.as_dict() if self.counters else None,
        }


def ak_public_key(ak_public: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from tpm2_pytss.types import TPM2B_PUBLIC

    public, _ = TPM2B_PUBLIC.unmarshal(ak_public)
    return load_pem_public_key(bytes(public.to_pem()))






def check_signature(ak_public: bytes, attest: bytes, signature: bytes) -> str | None:
    """None when `signature` is the AK's signature over `attest`, else the reason."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import TPMT_SIGNATURE

    try:
        key = ak_public_key(ak_public)
        sig, _ = TPMT_SIGNATURE.unmarshal(signature)
    except Exception as exc:
        return f"cannot decode AK public key or signature: {exc}"
    hash_algs = {TPM2_ALG.SHA256: hashes.SHA256(), TPM2_ALG.SHA384: hashes.SHA384(), TPM2_ALG.SHA512: hashes.SHA512()}
    try:
        if sig.sigAlg == TPM2_ALG.ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            ecc = sig.signature.ecdsa
            algo = hash_algs.get(ecc.hash)
            if algo is None:
                return f"unsupported signature hash {ecc.hash}"
            der = encode_dss_signature(
                int.from_bytes(bytes(ecc.signatureR), "big"), int.from_bytes(bytes(ecc.signatureS), "big")
            )
            key.verify(der, attest, ec.ECDSA(algo))
        elif sig.sigAlg == TPM2_ALG.RSASSA and isinstance(key, rsa.RSAPublicKey):
            algo = hash_algs.get(sig.signature.rsassa.hash)
            if algo is None:
                return f"unsupported signature hash {sig.signature.rsassa.hash}"
            key.verify(bytes(sig.signature.rsassa.sig), attest, padding.PKCS1v15(), algo)
        else:
            return f"signature algorithm {sig.sigAlg} does not match the enrolled AK"
    except InvalidSignature:
        return "signature does not verify with the enrolled AK (quote from another key, or altered)"
    return None


def _selected(pcr_select: Any) -> dict[str, list[int]]:
    from tpm2_pytss.constants import TPM2_ALG

    names = {TPM2_ALG.SHA1: "sha1", TPM2_ALG.SHA256: "sha256", TPM2_ALG.SHA384: "sha384"}
    out: dict[str, list[int]] = {}
    for sel in pcr_select:
        bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        out[names.get(sel.hash, str(sel.hash))] = [
            byte * 8 + bit for byte, bits in enumerate(bitmap) for bit in range(8) if bits & (1 << bit)
        ]
    return out


def verify_quote(evidence: Evidence, expect: Expectations) -> VerificationResult:
    from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST
    from tpm2_pytss.types import TPMS_ATTEST

    out: list[CheckOutcome] = []

    def add(name: str, problem: str | None, ok_detail: str) -> bool:
        out.append(CheckOutcome(name, "fail" if problem else "pass", problem or ok_detail))
        return problem is None

    def skip(names: Sequence[str], why: str) -> None:
        out.extend(CheckOutcome(n, "skip", why) for n in names)

    # --- the quote structure and its signature
    attest: Any = None
    try:
        attest, used = TPMS_ATTEST.unmarshal(evidence.attest)
        problem = None
        if used != len(evidence.attest):
            problem = f"{len(evidence.attest) - used} trailing bytes after the attest structure"
        elif attest.magic != TPM2_GENERATED.VALUE:
            problem = "magic is not TPM_GENERATED_VALUE: not produced by a TPM"
        elif attest.type != TPM2_ST.ATTEST_QUOTE:
            problem = f"attest type {attest.type} is not a quote"
    except Exception as exc:
        problem = f"cannot decode TPMS_ATTEST: {exc}"
    if not add("attest_format", problem, "TPMS_ATTEST quote, TPM_GENERATED_VALUE"):
        skip([c for c in CHECKS if c != "attest_format"], "quote could not be decoded")
        return VerificationResult(tuple(out), None)

    signed = add(
        "ak_signature",
        check_signature(expect.ak_public, evidence.attest, evidence.signature),
        "signed by the enrolled attestation key",
    )
    if not signed:
        skip([c for c in CHECKS if c not in {"attest_format", "ak_signature"}], "quote signature is not valid")
        return VerificationResult(tuple(out), None)

    nonce = bytes(attest.extraData)
    add(
        "nonce",
        None if hmac.compare_digest(nonce, expect.nonce) else
        f"quote carries nonce {nonce.hex()[:16]}..., expected {expect.nonce.hex()[:16]}... (stale or replayed quote)",
        "fresh nonce",
    )

    selected = _selected(attest.attested.quote.pcrSelect)
    wanted = sorted(set(expect.pcrs))
    quoted = selected.get(BANK, [])
    extra_banks = sorted(b for b in selected if b != BANK)
    sel_ok = add(
        "pcr_selection",
        None if quoted == wanted and not extra_banks else
        f"quote covers {BANK}:{quoted} (+{extra_banks}), expected {BANK}:{wanted}",
        f"{BANK}:{','.join(map(str, wanted))}",
    )

    missing = [i for i in wanted if i not in evidence.pcrs]
    if missing:
        add("pcr_digest", f"PCR values missing for {missing}", "")
    else:
        digest = hashlib.sha256(b"".join(evidence.pcrs[i] for i in wanted)).digest()
        add(
            "pcr_digest",
            None if hmac.compare_digest(digest, bytes(attest.attested.quote.pcrDigest)) else
            "the PCR values sent do not hash to the quoted PCR digest (values altered in transit)",
            "PCR values match the signed digest",
        )
    pcrs_trusted = sel_ok and out[-1].status == "pass"

    clock = attest.clockInfo
    counters = Counters(int(clock.clock), int(clock.resetCount), int(clock.restartCount))
    add("counters", _counter_problem(expect.last_counters, counters),
        f"resetCount {counters.reset_count}, restartCount {counters.restart_count}, clock {counters.clock}")

    # --- PCR values against the golden set
    if not expect.golden_pcrs:
        skip(["golden_pcrs"], "no golden PCR values recorded or given")
    elif not pcrs_trusted:
        skip(["golden_pcrs"], "PCR values are not the quoted ones")
    else:
        bad = []
        for index, value in sorted(expect.golden_pcrs.items()):
            got = evidence.pcrs.get(index)
            if got is None:
                bad.append(f"PCR {index} not quoted")
            elif got != value:
                bad.append(f"PCR {index} is {got.hex()[:16]}..., golden {value.hex()[:16]}...")
        add("golden_pcrs", "; ".join(bad) or None, f"PCRs {sorted(expect.golden_pcrs)} match the golden values")

    boot_pcrs = tuple(i for i in BOOT_PCRS if i in expect.pcrs)
    if evidence.boot_log is None:
        skip(["boot_log_replay"], "the device sent no boot event log")
    elif not pcrs_trusted:
        skip(["boot_log_replay"], "PCR values are not the quoted ones")
    elif not boot_pcrs:
        skip(["boot_log_replay"], "no boot PCR (0-7) in the quote")
    else:
        try:
            problems = boot_log_problems(evidence.boot_log, evidence.pcrs, boot_pcrs)
        except BootLogError as exc:
            problems = [str(exc)]
        add("boot_log_replay", "; ".join(problems) or None,
            f"boot event log replays to PCRs {','.join(map(str, boot_pcrs))}")

    _check_ima(evidence, expect, out, pcrs_trusted, add, skip)
    _check_images(evidence, expect, out, pcrs_trusted, add, skip)
    return VerificationResult(tuple(out), counters)


def _counter_problem(last: Counters | None, now: Counters) -> str | None:
    if last is None:
        return None
    if now.reset_count < last.reset_count:
        return f"resetCount went backwards ({last.reset_count} -> {now.reset_count})"
    if now.reset_count == last.reset_count:
        if now.restart_count < last.restart_count:
            return f"restartCount went backwards ({last.restart_count} -> {now.restart_count})"
        if now.restart_count == last.restart_count and now.clock <= last.clock:
            return f"clock did not advance since the last quote ({last.clock} -> {now.clock}): an old quote"
    return None


def _check_ima(evidence: Evidence, expect: Expectations, out: list[CheckOutcome], trusted: bool,
               add: Any, skip: Any) -> None:
    names = ["ima_entries", "ima_replay", "ima_allowlist"]
    if evidence.ima_log is None:
        pcr10 = evidence.pcrs.get(IMA_PCR) if trusted and IMA_PCR in expect.pcrs else None
        if pcr10 is not None and pcr10 != ZERO_PCR:
            add("ima_entries", f"PCR {IMA_PCR} holds measurements but the device sent no IMA list (withheld?)", "")
            skip(names[1:], "no IMA measurement list")
        elif expect.ima_required or expect.ima_allowlist is not None:
            add("ima_entries", "the device sent no IMA measurement list", "")
            skip(names[1:], "no IMA measurement list")
        else:
            skip(names, "the device has no IMA measurement list")
        return
    try:
        entries = parse_ima_list(evidence.ima_log)
    except ImaParseError as exc:
        add("ima_entries", str(exc), "")
        skip(names[1:], "IMA list could not be parsed")
        return
    bad = [f"line {e.line} ({e.path}): template hash does not match its data"
           for e in entries if not e.template_hash_ok()]
    add("ima_entries", "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "") or None,
        f"{len(entries)} entries, template hashes consistent")
    if IMA_PCR not in expect.pcrs:
        skip(["ima_replay"], f"PCR {IMA_PCR} not in the quote")
    elif not trusted:
        skip(["ima_replay"], "PCR values are not the quoted ones")
    else:
        # The kernel appends entries at any time; the list is read after the quote, so a prefix of
        # it must replay to the quoted PCR 10 (as Keylime does). Later entries are not covered.
        target, value, covered = evidence.pcrs[IMA_PCR], replay([]), None
        if value == target:
            covered = 0
        for count, entry in enumerate(entries, start=1):
            if entry.pcr == IMA_PCR:
                value = hashlib.sha256(value + entry.extend_value()).digest()
            if value == target:
                covered = count
        if covered is None:
            problem = (f"no prefix of the {len(entries)} IMA entries replays to PCR {IMA_PCR} "
                       f"({target.hex()[:16]}...): list altered or truncated")
        else:
            problem = None
        tail = f"; {len(entries) - covered} later entries not covered by this quote" if covered is not None and \
            covered < len(entries) else ""
        add("ima_replay", problem, f"{covered} IMA entries replay to PCR {IMA_PCR}{tail}")
    if expect.ima_allowlist is None:
        skip(["ima_allowlist"], "no allowlist given")
    else:
        problems = expect.ima_allowlist.problems(entries)
        if problems or _passed(out, "ima_replay"):
            add("ima_allowlist", "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5
                else "") or None, "every measured file is allowed")
        else:  # never a pass for a list the quote does not vouch for
            skip(["ima_allowlist"], "the IMA list is not verified against the quote")


def _check_images(evidence: Evidence, expect: Expectations, out: list[CheckOutcome], trusted: bool,
                  add: Any, skip: Any) -> None:
    pcr = expect.image_pcr
    if evidence.image_log is None:
        add("image_log_replay", "the device sent no module image log", "")
        skip(["image_deployment"], "no module image log")
        return
    events = list(evidence.image_log)
    if pcr not in expect.pcrs:
        skip(["image_log_replay"], f"PCR {pcr} not in the quote")
    elif not trusted:
        skip(["image_log_replay"], "PCR values are not the quoted ones")
    else:
        try:
            replayed: bytes | None = replay_image_log(events)
            problem = None
        except (ValueError, TypeError) as exc:
            replayed, problem = None, f"module image log is malformed: {exc}"
        if replayed is not None and replayed != evidence.pcrs[pcr]:
            problem = (f"replaying {len(events)} image events gives {replayed.hex()[:16]}..., PCR {pcr} is "
                       f"{evidence.pcrs[pcr].hex()[:16]}... (log altered, or PCR {pcr} reset or extended by "
                       "something else)")
        add("image_log_replay", problem, f"{len(events)} image events replay to PCR {pcr}")
    if expect.deployment_images is None:
        skip(["image_deployment"], "no deployment given")
        return
    bad = []
    for event in events:
        module, digest = str(event.get("module")), str(event.get("digest"))
        allowed = expect.deployment_images.get(module)
        if allowed is None:
            bad.append(f"module {module} (image {digest}) is not in the deployment")
        elif digest not in allowed:
            bad.append(f"module {module} runs image {digest}, the deployment has {', '.join(sorted(allowed))}")
    measured = {str(e.get("module")) for e in events}
    not_started = sorted(set(expect.deployment_images) - measured)
    if not_started:
        bad.append("not measured (not started since boot): " + ", ".join(not_started))
    if bad or _passed(out, "image_log_replay"):
        add("image_deployment", "; ".join(bad) or None, f"{len(events)} image events, all in the deployment")
    else:  # never a pass for a log the quote does not vouch for
        skip(["image_deployment"], "the module image log is not verified against the quote")


def _passed(out: list[CheckOutcome], name: str) -> bool:
    return any(c.name == name and c.status == "pass" for c in out)
