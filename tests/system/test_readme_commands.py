"""The README's two commands in either order, twice, on one machine: `scripts/test` installs, then
`scripts/run` works; a damaged install (what `pip install --prefix` with the venv's own pip did:
it uninstalled the agent but left install-deps.sh's stamp) is noticed and repaired by the next
command.

Runs on a copy of this checkout (its tracked and new files) with a venv of its own, so the
developer's .venv is never touched. scripts/test's install is its first line,
`. scripts/install-deps.sh`; the quickstart's first steps are `scripts/run --steps 2` (broker,
registry, software TPM, podman service, fleet keys with edgectl, the device identity, the agent
config checked by edge-agent), under a container label of its own (EDGE_QUICKSTART_LABEL) so a
developer's quickstart on the same machine is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_checkout(dest: Path) -> Path:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def clean_env() -> dict[str, str]:
    """The environment of a new shell: not this test session's venv."""
    dev_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "CONTAINERS_CONF")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != dev_bin)
    env["EDGE_QUICKSTART_LABEL"] = f"qs-readme-test-{uuid.uuid4().hex[:8]}"
    return env


def sh(repo: Path, script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", "-c", script], cwd=repo, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def quickstart_first_steps(repo: Path) -> str:
    out = sh(repo, "scripts/run --steps 2 --non-interactive", timeout=900).stdout
    assert "[1/9] done" in out and "[2/9] done" in out, out
    assert "edge-agent config check: ok" in out, out
    assert "[3/9]" not in out, out
    assert "stopped everything the quickstart started" in out, out
    return out


def test_scripts_test_install_then_scripts_run_then_again_after_damage(tmp_path: Path) -> None:
    repo = copy_checkout(tmp_path / "checkout")
    venv = repo / ".venv"

    # 1. scripts/test's install (its first line), in a fresh checkout: creates .venv
    sh(repo, ". scripts/install-deps.sh", timeout=1500)
    for tool in ("edge-agent", "edgectl", "edge-pilot"):
        assert (venv / "bin" / tool).is_file(), tool

    # 2. then scripts/run: the quickstart's first steps
    quickstart_first_steps(repo)

    # 3. the install damaged as the old unit-file test did: agent uninstalled, stamp left in place
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-y", "-q", "edge-agent"], check=True, env=clean_env())
    assert not (venv / "bin" / "edge-agent").exists() and (venv / ".edge-deps").exists()

    # 4. scripts/run again notices and repairs it, and works
    out = quickstart_first_steps(repo)
    assert "the agent is not installed in" in out and "reinstalling" in out, out
    assert (venv / "bin" / "edge-agent").is_file() and (venv / "bin" / "edgectl").is_file()

    # 5. and scripts/test's install a second time is a no-op that finds everything in place
    again = sh(repo, ". scripts/install-deps.sh && edge-agent version && edgectl --help >/dev/null", timeout=600)
    assert "installing" not in again.stdout and "reinstalling" not in again.stdout, again.stdout
    assert again.stdout.startswith("edge-agent "), again.stdout
