"""edgectl show reads a signed (DSSE) desired document by its payload; edgectl telemetry takes
the same --tls-* flags as the other commands."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from edge_shared.trust.keys import generate_private_key
from edgectl.cli import build_parser
from edgectl.client import _desired_json
from edgectl.documents import sign_document
from edgectl.telemetry_cmd import _tls_context


def test_signed_desired_document_is_shown_by_its_payload() -> None:
    doc = {"version": 7, "deployment": {"modules": {}}}
    envelope = sign_document(doc, generate_private_key())
    shown, error = _desired_json(envelope)
    assert error is None and shown is not None
    assert shown["version"] == 7 and shown["deployment"] == {"modules": {}}


def test_plain_and_broken_documents() -> None:
    assert _desired_json(b'{"version": 3}') == ({"version": 3}, None)
    shown, error = _desired_json(b"not json")
    assert shown is None and error is not None and "not JSON" in error
    bad = json.dumps({"payloadType": "application/vnd.edge-agent.desired+json", "payload": "%%%", "signatures": []})
    shown, error = _desired_json(bad.encode())
    assert shown is None and error is not None and "undecodable" in error
    inner_not_object = base64.b64encode(b"[1]").decode()
    bad = json.dumps({"payloadType": "application/vnd.edge-agent.desired+json", "payload": inner_not_object})
    assert _desired_json(bad.encode()) == (None, "not a JSON object")


def test_telemetry_tls_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(["telemetry", "rover-01"])
    assert _tls_context(args) is None
    repo = Path(__file__).resolve().parents[3]
    subprocess.run([str(repo / "scripts" / "make-certs.sh"), str(tmp_path), "ca"], check=True, capture_output=True)
    cert = tmp_path / "ca.crt"
    args = build_parser().parse_args(["telemetry", "rover-01", "--tls-ca", str(cert)])
    ctx = _tls_context(args)
    assert ctx is not None and ctx.verify_mode.name == "CERT_REQUIRED"
