"""The enrollment service's systemd units, checked with systemd's own tools: they verify (the
edgectl it runs exists where the unit says, in a staged root) and the service is confined."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
UNITS = ("edgectl-enroll.service", "edgectl-broker-reload.path", "edgectl-broker-reload.service")


def test_units_verify_and_the_service_is_confined(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    for link in ("bin", "lib", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy2("/usr/bin/systemctl", root / "usr/bin/systemctl")
    # This environment's edgectl console script (beside the interpreter running the tests).
    edgectl = Path(sys.executable).with_name("edgectl")
    assert edgectl.exists(), f"{edgectl} is missing: install the project (scripts/install-deps.sh)"
    (root / "opt" / "edge-agent" / "bin").mkdir(parents=True)
    shutil.copy2(edgectl, root / "opt" / "edge-agent" / "bin" / "edgectl")
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy2(REPO / "systemd" / unit, unit_dir / unit)
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *(f"/etc/systemd/system/{u}" for u in UNITS)],
                         capture_output=True, text=True, timeout=120)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "edgectl" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true",
                               str(REPO / "systemd" / "edgectl-enroll.service")],
                              capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0, security.stdout
