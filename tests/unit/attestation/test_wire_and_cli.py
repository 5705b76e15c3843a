from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from edge_agent.attestation.mqtt_command import dispatch
from edge_agent.attestation.quote import AttestRequestError, encode_quote, parse_attest_request
from edge_shared.attestation import decode_evidence
from edge_shared.protocol import CommandFailed
from edgectl.attest_cmds import AttestationFailure, deployment_images, parse_pcr_list, tools_pcr_file
from tests.fakes.tpm import FakeTpm


def test_request_defaults_and_validation() -> None:
    req = parse_attest_request({"nonce": "aa" * 20}, image_pcr=22)
    assert req.nonce == b"\xaa" * 20 and req.pcrs == (0, 1, 2, 3, 4, 5, 6, 7, 10, 22)
    for bad, message in [
        ({}, "nonce: expected"),
        ({"nonce": "zz"}, "nonce: not valid hex"),
        ({"nonce": "aa" * 8}, "nonce: 8 bytes"),
        ({"nonce": "aa" * 20, "pcrs": [24]}, "pcrs:"),
        ({"nonce": "aa" * 20, "pcrs": [True]}, "pcrs:"),
    ]:
        with pytest.raises(AttestRequestError, match=message):
            parse_attest_request(bad, 23)


def test_quote_round_trips_and_bad_fields_are_named() -> None:
    raw = FakeTpm().quote([0, 23], b"n" * 20)
    evidence = decode_evidence(json.loads(json.dumps({"quote": encode_quote(raw), "image_log": []})))
    assert evidence.attest == raw.attest and evidence.pcrs == raw.pcrs
    good = encode_quote(raw)
    for edit, message in [
        ({"bank": "sha1"}, "quote.bank"),
        ({"attest": "!!"}, "quote.attest: not valid base64"),
        ({"pcrs": {"0": "00"}}, "quote.pcrs.0: 1 bytes"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_evidence({"quote": {**good, **edit}})


async def test_dispatch_envelope() -> None:
    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("fail"):
            raise CommandFailed("attestation_unavailable", "no TPM")
        return {"echo": request}

    assert await dispatch(handler, b'{"a": 1}') == {"ok": True, "result": {"echo": {"a": 1}}}
    assert (await dispatch(handler, b'{"fail": 1}'))["error"]["code"] == "attestation_unavailable"
    assert (await dispatch(handler, b"[1]"))["error"]["code"] == "bad_request"
    assert (await dispatch(handler, b"\xff"))["error"]["code"] == "bad_request"


def test_deployment_images_forms() -> None:
    d = "sha256:" + "ab" * 32
    assert deployment_images({"modules": {"pilot": {"image": f"reg/pilot@{d}"}}}) == {"pilot": {d}}
    assert deployment_images({"deployment": {"modules": [{"name": "cam", "digest": d}]}}) == {"cam": {d}}
    with pytest.raises(AttestationFailure, match=r"modules\.pilot: no image digest"):
        deployment_images({"modules": {"pilot": {"image": "reg/pilot:latest"}}})
    with pytest.raises(AttestationFailure, match="expected a 'modules' object"):
        deployment_images([])


def test_pcr_list() -> None:
    assert parse_pcr_list("0-3,10, 23") == (0, 1, 2, 3, 10, 23)
    for bad in ("", "a", "0-24"):
        with pytest.raises(AttestationFailure):
            parse_pcr_list(bad)


def test_tools_pcr_file_layout() -> None:
    values = {i: bytes([i]) * 32 for i in (0, 1, 2, 3, 4, 5, 6, 7, 10, 23)}
    data = tools_pcr_file(values, tuple(values))
    assert len(data) == 4 + 16 * 8 + 4 + 2 * (4 + 8 * 66)
    count, alg, size, bitmap = struct.unpack_from("<IHB4s", data)
    assert (count, alg, size) == (1, 0x000B, 3) and bitmap[:3] == bytes([0xFF, 0x04, 0x80])
    assert struct.unpack_from("<I", data, 132)[0] == 2


async def test_enrollment_refuses_an_unrestricted_ak() -> None:
    from edge_shared.attestation import b64
    from edgectl.attest_cmds import enroll_device
    from edgectl.attestation.challenge import ak_attributes_problem

    fake_ak = FakeTpm().ak_public()  # a plain software key: not restricted, not fixedTPM
    assert "restricted" in (ak_attributes_problem(fake_ak) or "")

    async def transport(device: str, command: str, payload: Any) -> dict[str, Any]:
        assert command == "attest_enroll", "enrollment must stop before the challenge"
        return {"ek_public": b64(fake_ak), "ek_cert": None, "ek_type": "ecc", "ak_public": b64(fake_ak)}

    with pytest.raises(AttestationFailure, match="not a restricted signing key"):
        await enroll_device(transport, "dev")
