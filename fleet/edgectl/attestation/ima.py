"""Linux IMA measurement list: parse the ASCII list and replay it into PCR 10 (pure functions).

Written by hand because no maintained Python library parses and replays the IMA list (Keylime
has its own, tied to its agent). Supported templates: ``ima-ng`` and ``ima-sig`` (the kernel
default since 4.x). The replay follows what recent kernels do for a non-SHA-1 bank: each entry
extends SHA-256 over its template data; a violation entry (template hash all zeros) extends
all-ones. The listed template hash (SHA-1 in the ASCII list) is recomputed, so an entry whose
file digest or path was edited is caught on its own, not only by the PCR mismatch.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edge_shared.attestation import ZERO_PCR

IMA_PCR = 10
SUPPORTED_TEMPLATES = ("ima-ng", "ima-sig")
VIOLATION_SHA256 = b"\xff" * 32


class ImaParseError(ValueError):
    """A line of the measurement list is malformed; the message names the line."""


@dataclass(frozen=True)
class ImaEntry:
    line: int
    pcr: int
    template_hash: str  # hex as listed
    template: str
    file_algo: str  # e.g. "sha256"
    file_digest: str  # hex
    path: str
    signature: str = ""  # hex, ima-sig only

    @property
    def is_violation(self) -> bool:
        return set(self.template_hash) == {"0"}

    def template_data(self) -> bytes:
        """The template data the kernel hashes: length-prefixed fields, little-endian lengths."""
        digest_field = self.file_algo.encode() + b":\x00" + bytes.fromhex(self.file_digest)
        name_field = self.path.encode() + b"\x00"
        data = struct.pack("<I", len(digest_field)) + digest_field + struct.pack("<I", len(name_field)) + name_field
        if self.template == "ima-sig":
            sig = bytes.fromhex(self.signature)
            data += struct.pack("<I", len(sig)) + sig
        return data

    def extend_value(self) -> bytes:
        """What this entry extends into the SHA-256 bank."""
        if self.is_violation:
            return VIOLATION_SHA256
        return hashlib.sha256(self.template_data()).digest()

    def template_hash_ok(self) -> bool:
        if self.is_violation:
            return True
        algo = {40: "sha1", 64: "sha256"}.get(len(self.template_hash))
        if algo is None:
            return False
        return hashlib.new(algo, self.template_data()).hexdigest() == self.template_hash.lower()

    def to_line(self) -> str:
        fields = [str(self.pcr), self.template_hash, self.template, f"{self.file_algo}:{self.file_digest}", self.path]
        if self.template == "ima-sig" and self.signature:
            fields.append(self.signature)
        return " ".join(fields)


def make_entry(path: str, file_digest: bytes, line: int = 0, pcr: int = IMA_PCR) -> ImaEntry:
    """An ima-ng entry as the kernel would write it (used by tests and tools)."""
    entry = ImaEntry(line, pcr, "", "ima-ng", "sha256", file_digest.hex(), path)
    template_hash = hashlib.sha1(entry.template_data(), usedforsecurity=False).hexdigest()
    return ImaEntry(line, pcr, template_hash, "ima-ng", "sha256", file_digest.hex(), path)


def parse_ima_list(text: str) -> list[ImaEntry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        # Paths may contain spaces; the signature (ima-sig) is the last field when present.
        parts = raw.split(" ")
        if len(parts) < 5:
            raise ImaParseError(f"IMA list line {number}: expected 'PCR HASH TEMPLATE ALGO:DIGEST PATH', got {raw!r}")
        pcr_text, template_hash, template = parts[0], parts[1], parts[2]
        if template not in SUPPORTED_TEMPLATES:
            raise ImaParseError(
                f"IMA list line {number}: template {template!r} is not supported; expected one of "
                + ", ".join(SUPPORTED_TEMPLATES)
            )
        algo, sep, digest = parts[3].partition(":")
        rest = parts[4:]
        signature = ""
        if template == "ima-sig" and len(rest) > 1 and _is_hex(rest[-1]) and rest[-1].startswith("03"):
            signature = rest.pop()
        try:
            pcr = int(pcr_text)
            bytes.fromhex(digest)
            bytes.fromhex(template_hash)
        except ValueError:
            raise ImaParseError(f"IMA list line {number}: PCR, template hash or file digest is not valid") from None
        if not sep or not algo:
            raise ImaParseError(f"IMA list line {number}: file digest {parts[3]!r} is not ALGO:HEX")
        entries.append(ImaEntry(number, pcr, template_hash, template, algo, digest.lower(), " ".join(rest), signature))
    return entries


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return len(text) % 2 == 0


def replay(entries: Iterable[ImaEntry], pcr: int = IMA_PCR) -> bytes:
    value = ZERO_PCR
    for entry in entries:
        if entry.pcr == pcr:
            value = hashlib.sha256(value + entry.extend_value()).digest()
    return value


@dataclass(frozen=True)
class Allowlist:
    """Which file digests may appear in the IMA list, per path (like a Keylime runtime policy).

    JSON: ``{"digests": {"/usr/bin/python3.11": ["<sha256 hex>", ...]}, "excludes": ["/tmp/"]}``;
    an exclude is a path prefix whose entries are not checked.
    """

    digests: Mapping[str, frozenset[str]]
    excludes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: object, source: str = "allowlist") -> Allowlist:
        if not isinstance(data, dict) or not isinstance(data.get("digests"), dict):
            raise ValueError(f"{source}: expected an object with a 'digests' object (path -> list of sha256 hex)")
        digests: dict[str, frozenset[str]] = {}
        for path, values in data["digests"].items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{source}: digests[{path!r}]: expected a list of sha256 hex strings")
            digests[path] = frozenset(v.lower().removeprefix("sha256:") for v in values)
        excludes = data.get("excludes", [])
        if not isinstance(excludes, list) or not all(isinstance(v, str) for v in excludes):
            raise ValueError(f"{source}: excludes: expected a list of path prefixes")
        return cls(digests, tuple(excludes))

    def problems(self, entries: Iterable[ImaEntry]) -> list[str]:
        out = []
        for entry in entries:
            if entry.is_violation or entry.path == "boot_aggregate" or entry.path.startswith(self.excludes):
                continue
            allowed = self.digests.get(entry.path)
            if allowed is None:
                out.append(f"line {entry.line}: {entry.path} is not in the allowlist")
            elif entry.file_algo != "sha256" or entry.file_digest not in allowed:
                out.append(f"line {entry.line}: {entry.path} has digest {entry.file_algo}:{entry.file_digest}, "
                           "not one the allowlist permits")
        return out
