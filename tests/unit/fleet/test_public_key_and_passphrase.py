"""`edgectl public-key` and the passphrase order (EDGECTL_KEY_PASSWORD, then COSIGN_PASSWORD, then
the prompt), through the real CLI process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgectl.trust_cmds import PASSWORD_ENVS, passphrase_source

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cosign"
PASSPHRASE = "edge-agent-fixture"  # tests/fixtures/cosign/README.md


def edgectl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in PASSWORD_ENVS}
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True,
                          env={**clean, **env}, stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize("name", ["cosign-n32768", "cosign-n65536"])
def test_public_key_prints_cosign_pub(name: str) -> None:
    proc = edgectl("public-key", "--key", str(FIXTURES / f"{name}.key"), env={"COSIGN_PASSWORD": PASSPHRASE})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / f"{name}.pub").read_text()
    assert proc.stdout.startswith("-----BEGIN PUBLIC KEY-----\n")


def test_public_key_outfile(tmp_path: Path) -> None:
    out = tmp_path / "k.pub"
    proc = edgectl("public-key", "--key", str(FIXTURES / "cosign-n32768.key"), "--outfile", str(out),
                   env={"EDGECTL_KEY_PASSWORD": PASSPHRASE})
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (FIXTURES / "cosign-n32768.pub").read_text() and proc.stdout == ""


def test_edgectl_variable_wins_and_says_so_when_both_differ() -> None:
    proc = edgectl("public-key", "--key", str(FIXTURES / "cosign-n32768.key"),
                   env={"EDGECTL_KEY_PASSWORD": PASSPHRASE, "COSIGN_PASSWORD": "something else"})
    assert proc.returncode == 0, proc.stderr
    assert "EDGECTL_KEY_PASSWORD and COSIGN_PASSWORD are both set and differ; using EDGECTL_KEY_PASSWORD" in proc.stderr


def test_wrong_passphrase_names_the_variable_used() -> None:
    proc = edgectl("public-key", "--key", str(FIXTURES / "cosign-n32768.key"),
                   env={"EDGECTL_KEY_PASSWORD": "wrong", "COSIGN_PASSWORD": PASSPHRASE})
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("edgectl public-key: ") and "wrong passphrase" in line, proc.stderr
    assert "the passphrase came from $EDGECTL_KEY_PASSWORD ($COSIGN_PASSWORD is also set and was not used)" in line
    only_cosign = edgectl("public-key", "--key", str(FIXTURES / "cosign-n32768.key"), env={"COSIGN_PASSWORD": "nope"})
    assert only_cosign.returncode == 1
    assert only_cosign.stderr.strip().endswith("the passphrase came from $COSIGN_PASSWORD"), only_cosign.stderr


def test_no_variable_and_no_terminal_names_both_variables() -> None:
    proc = edgectl("public-key", "--key", str(FIXTURES / "cosign-n32768.key"), env={})
    assert proc.returncode != 0
    assert "set EDGECTL_KEY_PASSWORD (or COSIGN_PASSWORD)" in proc.stderr


def test_order_is_edgectl_then_cosign() -> None:
    assert passphrase_source({"EDGECTL_KEY_PASSWORD": "a", "COSIGN_PASSWORD": "b"}) == "EDGECTL_KEY_PASSWORD"
    assert passphrase_source({"COSIGN_PASSWORD": "b"}) == "COSIGN_PASSWORD"
    assert passphrase_source({}) is None
