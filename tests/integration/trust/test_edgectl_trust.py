"""edgectl keygen / sign-image / verify-image / sign-document, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.desired.admission import Admitted, DocumentTrust, History, admit
from edge_shared.document import Limits
from edge_shared.spec import validate_deployment
from edge_shared.trust import keys
from tests.integration.trust.conftest import ImageFactory

REPO_ROOT = Path(__file__).resolve().parents[3]


def edgectl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "EDGECTL_KEY_PASSWORD": "s3cret-passphrase", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_keygen_sign_verify_round_trip(tmp_path: Path, images: ImageFactory) -> None:
    out = edgectl("keygen", "--output-key-prefix", str(tmp_path / "cosign"))
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    assert (tmp_path / "cosign.key").read_text().startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    keys.load_private_key(tmp_path / "cosign.key", b"s3cret-passphrase")
    reg = ["--insecure-registry", images.registry.host]

    legacy = images.push(images.unique("cli-legacy"))
    bundle = images.push(images.unique("cli-bundle"))
    unsigned = images.push(images.unique("cli-unsigned"))
    assert edgectl("sign-image", legacy, "--key", str(tmp_path / "cosign.key"), *reg).returncode == 0
    signed = edgectl("sign-image", bundle, "--bundle", "--key", str(tmp_path / "cosign.key"), *reg)
    assert signed.returncode == 0 and "(bundle:" in signed.stdout, signed.stderr

    for ref in (legacy, bundle):
        ok = edgectl("verify-image", ref, "--key", str(tmp_path / "cosign.pub"), *reg)
        assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stdout + ok.stderr
    refused = edgectl("verify-image", unsigned, "--key", str(tmp_path / "cosign.pub"), *reg)
    assert refused.returncode == 1 and "unsigned" in refused.stdout

    wrong = edgectl(
        "sign-image", legacy, "--key", str(tmp_path / "cosign.key"), *reg, env={"EDGECTL_KEY_PASSWORD": "nope"}
    )
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr


def test_sign_document_is_accepted_by_the_gate(tmp_path: Path) -> None:
    assert edgectl("keygen", "--output-key-prefix", str(tmp_path / "doc")).returncode == 0
    assert edgectl("keygen", "--output-key-prefix", str(tmp_path / "next")).returncode == 0
    desired = tmp_path / "desired.json"
    desired.write_text(json.dumps({"schema": 1, "version": 7, "deployment": {"modules": {}}}))
    out = edgectl(
        "sign-document",
        str(desired),
        "--key",
        str(tmp_path / "doc.key"),
        "--expires-in",
        "1h",
        "--rotate-to",
        str(tmp_path / "doc.pub"),
        "--rotate-to",
        str(tmp_path / "next.pub"),
        "-o",
        str(tmp_path / "signed.json"),
    )
    assert out.returncode == 0, out.stderr
    # The device's document gate admits it, with the rotation to both keys.
    decision = admit(
        (tmp_path / "signed.json").read_bytes(),
        limits=Limits(),
        trust=DocumentTrust("enforce", (keys.load_public_key(tmp_path / "doc.pub"),)),
        history=History(),
        now=time.time(),
        validate=validate_deployment,
    )
    assert isinstance(decision, Admitted), decision
    assert decision.version == 7 and decision.document == {"modules": {}}
    assert decision.new_keys is not None and len(decision.new_keys) == 2
    bad = edgectl("sign-document", str(desired), "--key", str(tmp_path / "doc.key"), "--expires-in", "soon")
    assert bad.returncode != 0 and "expires-in" in bad.stderr
