"""The TPM worker's wire format (edge_agent.attestation.tpm_worker <-> SubprocessTpm): one JSON
object per line each way, bytes as base64, one request at a time.

Worker, first line after start ("hello", id 0):
    ``{"id": 0, "ok": true, "result": {"pid": N, "flushed": N}}`` or an error answer with id 0.
Request  ``{"id": N, "op": OP, "args": {...}}``, OP one of `OPS`.
Answer   ``{"id": N, "ok": true, "result": ...}`` or
         ``{"id": N, "ok": false, "error": {"kind": "tpm"|"request"|"internal", "message": TEXT}}``.
Bye      ``{"bye": "idle"}``: the worker leaves after its idle timeout and reads nothing more, so
         a request the parent wrote after it was never executed and may be sent again.

Written by hand: a dozen lines of JSON over a pipe need no RPC library. Pure functions; `execute`
runs one request line against any `TpmBackend` (the worker's is the real TPM; unit tests use
the fake).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.attestation.tpm import Endorsement, RawQuote, TpmBackend, TpmError
from edge_shared import attestation
from edge_shared.attestation import b64

OPS = ("describe", "endorsement", "ak_public", "activate_credential", "quote", "pcr_read", "pcr_extend")
HELLO_ID = 0
MAX_LINE = 1 << 20  # answers are a few KB (an EK certificate is the biggest); more is garbage


class WireError(ValueError):
    """A line does not follow the worker protocol; the message names the field."""


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class Answer:
    id: int | None
    ok: bool
    result: Any = None
    error_kind: str = ""
    error_message: str = ""


BYE = object()  # parse_answer's value for the worker's idle goodbye


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def unb64(value: object, name: str) -> bytes:
    try:
        return attestation.unb64(value, name)
    except ValueError as exc:
        raise WireError(str(exc)) from None


def _int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"{name}: expected an integer, got {type(value).__name__}")
    return value


def _int_list(value: object, name: str) -> list[int]:
    if not isinstance(value, list):
        raise WireError(f"{name}: expected a list of integers")
    return [_int(v, f"{name}[{i}]") for i, v in enumerate(value)]


# ----------------------------------------------------------------- values


def pcrs_to_wire(values: Mapping[int, bytes]) -> dict[str, str]:
    return {str(i): b64(v) for i, v in sorted(values.items())}


def pcrs_from_wire(value: object, name: str = "pcrs") -> dict[int, bytes]:
    if not isinstance(value, dict):
        raise WireError(f"{name}: expected an object of PCR index -> base64")
    out: dict[int, bytes] = {}
    for key, digest in value.items():
        if not (key.isascii() and key.isdigit()):
            raise WireError(f"{name}: key {key!r} is not a PCR index")
        out[int(key)] = unb64(digest, f"{name}.{key}")
    return out


def endorsement_to_wire(e: Endorsement) -> dict[str, Any]:
    return {"ek_public": b64(e.ek_public), "ek_cert": b64(e.ek_cert) if e.ek_cert is not None else None,
            "ek_type": e.ek_type}


def endorsement_from_wire(value: object) -> Endorsement:
    if not isinstance(value, dict):
        raise WireError("endorsement: expected an object")
    ek_type = value.get("ek_type")
    if ek_type not in ("ecc", "rsa"):
        raise WireError(f"endorsement.ek_type: {ek_type!r} is not ecc or rsa")
    cert = value.get("ek_cert")
    return Endorsement(unb64(value.get("ek_public"), "endorsement.ek_public"),
                       unb64(cert, "endorsement.ek_cert") if cert is not None else None, ek_type)


def quote_to_wire(q: RawQuote) -> dict[str, Any]:
    return {"attest": b64(q.attest), "signature": b64(q.signature), "pcrs": pcrs_to_wire(q.pcrs)}


def quote_from_wire(value: object) -> RawQuote:
    if not isinstance(value, dict):
        raise WireError("quote: expected an object")
    return RawQuote(unb64(value.get("attest"), "quote.attest"), unb64(value.get("signature"), "quote.signature"),
                    pcrs_from_wire(value.get("pcrs"), "quote.pcrs"))


# ----------------------------------------------------------------- requests (parent -> worker)


def request_line(call_id: int, op: str, args: Mapping[str, Any] | None = None) -> bytes:
    if op not in OPS:
        raise ValueError(f"unknown TPM worker operation {op!r}")
    return _line({"id": call_id, "op": op, "args": dict(args or {})})


def args_for(op: str, *params: Any) -> dict[str, Any]:
    """The `args` object of a TpmBackend call, from its Python parameters."""
    if op == "activate_credential":
        blob, secret = params
        return {"credential_blob": b64(blob), "encrypted_secret": b64(secret)}
    if op == "quote":
        pcrs, nonce = params
        return {"pcrs": list(pcrs), "nonce": b64(nonce)}
    if op == "pcr_read":
        (pcrs,) = params
        return {"pcrs": list(pcrs)}
    if op == "pcr_extend":
        pcr, digest = params
        return {"pcr": pcr, "digest": b64(digest)}
    if params:
        raise ValueError(f"{op} takes no parameters")
    return {}


def parse_request(line: bytes) -> Request:
    obj = _json_object(line)
    call_id = _int(obj.get("id"), "id")
    op = obj.get("op")
    if op not in OPS:
        raise WireError(f"op: {op!r} is not one of {', '.join(OPS)}")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise WireError("args: expected an object")
    return Request(call_id, str(op), args)


# ----------------------------------------------------------------- answers (worker -> parent)


def result_line(call_id: int, result: Any) -> bytes:
    return _line({"id": call_id, "ok": True, "result": result})


def error_line(call_id: int | None, kind: str, message: str) -> bytes:
    return _line({"id": call_id, "ok": False, "error": {"kind": kind, "message": message}})


def bye_line(reason: str = "idle") -> bytes:
    return _line({"bye": reason})


def parse_answer(line: bytes) -> Answer | object:
    """An `Answer`, or `BYE`. Raises WireError for anything else."""
    obj = _json_object(line)
    if "bye" in obj:
        return BYE
    call_id = obj.get("id")
    if call_id is not None:
        call_id = _int(call_id, "id")
    ok = obj.get("ok")
    if ok is True:
        return Answer(call_id, True, obj.get("result"))
    if ok is False:
        error = obj.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise WireError("error: expected an object with a message")
        return Answer(call_id, False, error_kind=str(error.get("kind", "")), error_message=error["message"])
    raise WireError("ok: expected true or false")


def result_from_wire(op: str, result: object) -> Any:
    """Decode the `result` of `op` into what the TpmBackend method returns."""
    if op == "describe":
        if not isinstance(result, str):
            raise WireError("describe: expected text")
        return result
    if op == "endorsement":
        return endorsement_from_wire(result)
    if op in ("ak_public", "activate_credential"):
        return unb64(result, op)
    if op == "quote":
        return quote_from_wire(result)
    if op == "pcr_read":
        return pcrs_from_wire(result)
    if op == "pcr_extend":
        if result is not None:
            raise WireError("pcr_extend: expected null")
        return None
    raise WireError(f"unknown operation {op!r}")


# ----------------------------------------------------------------- the worker's side


def execute(tpm: TpmBackend, line: bytes) -> bytes:
    """Run one request line against `tpm` and return the answer line. Never raises for a bad
    request or a TPM failure: both are answered as structured errors."""
    try:
        request = parse_request(line)
    except WireError as exc:
        return error_line(request_id(line), "request", f"malformed request: {exc}")
    try:
        return result_line(request.id, _run(tpm, request))
    except WireError as exc:
        return error_line(request.id, "request", f"malformed {request.op} request: {exc}")
    except TpmError as exc:
        return error_line(request.id, "tpm", str(exc))


def _run(tpm: TpmBackend, request: Request) -> Any:
    op, args = request.op, request.args
    if op == "describe":
        return tpm.describe()
    if op == "endorsement":
        return endorsement_to_wire(tpm.endorsement())
    if op == "ak_public":
        return b64(tpm.ak_public())
    if op == "activate_credential":
        return b64(tpm.activate_credential(unb64(args.get("credential_blob"), "credential_blob"),
                                           unb64(args.get("encrypted_secret"), "encrypted_secret")))
    if op == "quote":
        return quote_to_wire(tpm.quote(_pcr_indexes(args.get("pcrs")), unb64(args.get("nonce"), "nonce")))
    if op == "pcr_read":
        return pcrs_to_wire(tpm.pcr_read(_pcr_indexes(args.get("pcrs"))))
    if op == "pcr_extend":
        tpm.pcr_extend(_int(args.get("pcr"), "pcr"), unb64(args.get("digest"), "digest"))
        return None
    raise WireError(f"op: {op!r} is not one of {', '.join(OPS)}")  # pragma: no cover - parse_request checks


def _pcr_indexes(value: object) -> Sequence[int]:
    pcrs = _int_list(value, "pcrs")
    if not pcrs or not all(0 <= i <= 23 for i in pcrs):
        raise WireError("pcrs: expected a non-empty list of PCR indexes 0-23")
    return pcrs


def _json_object(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise WireError(f"line of {len(line)} bytes is longer than {MAX_LINE}")
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(f"not a JSON line ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object")
    return obj


def request_id(line: bytes) -> int | None:
    try:
        call_id = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return call_id if isinstance(call_id, int) and not isinstance(call_id, bool) else None
