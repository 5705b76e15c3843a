"""Static checks of the shipped systemd files with systemd's own tools.

`systemd-analyze verify` checks that every binary a unit runs exists, so it runs against a
staged root (`--root=`) that holds the distribution's units, /usr/bin/kill, and the real
edge-agent console script installed from the wheel at /opt/edge-agent, exactly where the
unit expects it on a device.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "systemd" / "edge-agent.service"
SYSUSERS = REPO_ROOT / "systemd" / "edge-agent.sysusers.conf"
TMPFILES = REPO_ROOT / "systemd" / "edge-agent.tmpfiles.conf"
PODMAN_DROPIN = REPO_ROOT / "systemd" / "podman.socket.d" / "edge-agent.conf"
MAX_EXPOSURE = 3.5


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def staged_root(tmp_path_factory: pytest.TempPathFactory, project_wheel: Path) -> Path:
    root = tmp_path_factory.mktemp("root")
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    for link in ("bin", "lib", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    # A venv of its own at /opt/edge-agent, as docs/operations.md installs it. Not this
    # interpreter's pip with --prefix: that first uninstalls the dev install from the test's own
    # venv, and tests must not change the environment they run in.
    venv = root / "opt" / "edge-agent"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
         "--no-deps", str(project_wheel)],
        check=True,
    )  # fmt: skip
    # The update guard and the pointer it makes at the first start (ExecStartPre=, ExecStart=).
    guard = root / "usr" / "lib" / "edge-agent" / "update-guard"
    guard.parent.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "systemd" / "edge-agent-update-guard", guard)
    (root / "var" / "lib" / "edge-agent" / "agent").mkdir(parents=True)
    (root / "var" / "lib" / "edge-agent" / "agent" / "current").symlink_to("/opt/edge-agent")
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    shutil.copy2(UNIT, unit_dir / UNIT.name)
    for name in ("edge-agent-update-check.service", "edge-agent-update-check.timer"):
        shutil.copy2(REPO_ROOT / "systemd" / name, unit_dir / name)
    (unit_dir / "podman.socket.d").mkdir()
    shutil.copy2(PODMAN_DROPIN, unit_dir / "podman.socket.d" / PODMAN_DROPIN.name)
    assert (root / "opt/edge-agent/bin/edge-agent").is_file()
    return root


def test_verify_is_clean(staged_root: Path) -> None:
    proc = run("systemd-analyze", "verify", f"--root={staged_root}", "edge-agent.service")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_update_check_units_verify(staged_root: Path) -> None:
    proc = run("systemd-analyze", "verify", f"--root={staged_root}", "edge-agent-update-check.service",
               "edge-agent-update-check.timer")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_podman_socket_dropin_verifies(staged_root: Path) -> None:
    if not (staged_root / "usr/lib/systemd/system/podman.socket").exists():
        # podman is installed on every dev/CI machine (scripts/install-deps.sh); fail loudly otherwise.
        raise AssertionError("podman.socket not installed on this machine: apt-get install podman")
    proc = run("systemd-analyze", "verify", f"--root={staged_root}", "podman.socket")
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_security_exposure_is_at_most_3_5(capsys: pytest.CaptureFixture[str]) -> None:
    proc = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+) (\S+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    with capsys.disabled():  # shown in every run, not only with -s
        print(f"\nsystemd-analyze security exposure for edge-agent.service: {exposure} {match.group(2)}")
        print("\n".join(line.rstrip() for line in proc.stdout.splitlines() if line.startswith("✗")))
    assert exposure <= MAX_EXPOSURE


def test_sysusers_creates_user_in_tss_group(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = run("systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS))
    assert proc.returncode == 0, proc.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    user = passwd["edge-agent"]
    assert user[2] != "0" and user[6] == "/usr/sbin/nologin"
    assert user[3] == groups["edge-agent"][2], "primary group is edge-agent"
    assert "edge-agent" in groups["tss"][3].split(",")


def test_tmpfiles_makes_config_and_state_dirs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert run("systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)).returncode == 0
    proc = run("systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES))
    assert proc.returncode == 0, proc.stderr
    st = (tmp_path / "etc/edge-agent").stat()
    gid = next(
        int(line.split(":")[2])
        for line in (tmp_path / "etc/group").read_text().splitlines()
        if line.startswith("edge-agent:")
    )
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, gid, 0o750)
    uid = next(
        int(line.split(":")[2])
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("edge-agent:")
    )
    st = (tmp_path / "var/lib/edge-agent").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o700)
