"""Install an agent release beside the running one: a venv at $state/agent/releases/<version>
from the release's wheelhouse, offline (`pip install --no-index`), checked by running its
`edge-agent version`, then marked complete. The marker is written last, so a power cut
mid-install leaves a folder the guard never switches to and the next attempt starts over.

The venv is built in place, not in a staging folder renamed at the end, because a venv's
scripts name their interpreter by absolute path.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

from edge_agent.selfupdate.files import RELEASE_MARKER, UpdateFiles, write_atomic

PIP_TIMEOUT_S = 900.0


class InstallFailed(Exception):
    pass


def wheelhouse_name() -> str:
    """The folder of a release image that holds this machine's wheels, e.g. x86_64-cp311."""
    return f"{platform.machine()}-cp{sys.version_info.major}{sys.version_info.minor}"


def base_python() -> str:
    """The interpreter the running agent's venv was made from (the system python3)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(cmd: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallFailed(f"{what}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InstallFailed(f"{what}: exit {proc.returncode}: {' | '.join(tail)[:400]}")
    return proc.stdout


def install(files: UpdateFiles, version: str, wheelhouse: Path, python: str | None = None) -> Path:
    """Build the release's venv from `wheelhouse` (a folder of wheels). Returns the release folder."""
    release = files.release_dir(version)
    if files.installed(version):
        return release
    shutil.rmtree(release, ignore_errors=True)  # an earlier attempt that never finished
    files.releases.mkdir(parents=True, exist_ok=True)
    _run([python or base_python(), "-m", "venv", str(release)], "create the venv", 120)
    _run(
        [
            str(release / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--find-links",
            str(wheelhouse),
            f"edge-agent=={version}",
        ],
        f"install edge-agent {version} from the release's wheels",
        PIP_TIMEOUT_S,
    )
    said = _run([str(release / "bin" / "edge-agent"), "version"], "run the new release", 60).strip()
    if said != f"edge-agent {version}":
        raise InstallFailed(f"the release says {said!r}, expected 'edge-agent {version}'")
    write_atomic(release / RELEASE_MARKER, version + "\n")
    return release


def collect(files: UpdateFiles, keep: set[str]) -> list[str]:
    """Remove installed releases other than `keep` (the running one, the one it came from, the
    one wanted). Returns the versions removed."""
    removed: list[str] = []
    try:
        entries = list(files.releases.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name in keep or entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.name.startswith("."):  # not the wheels of an install a power cut interrupted
            removed.append(entry.name)
    return removed
