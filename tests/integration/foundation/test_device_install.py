"""A device install holds no fleet code and none of the fleet's dependencies: the device's
distribution (edge-agent, with the shared leaf edge-shared it depends on) is built from a copy of
the sources, installed offline into a fresh venv, and what landed there is read back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# Dependencies only the fleet side (fleet/pyproject.toml) or a web front end would bring.
FLEET_ONLY = {"edgectl", "pynacl", "starlette", "fastapi", "uvicorn", "jinja2", "flask", "playwright", "selenium"}


def requirement_names(requires: list[str]) -> set[str]:
    names = set()
    for line in requires:
        if "extra ==" in line:
            continue  # optional extras are not installed on the device
        name = line.split(";")[0].strip()
        for stop in "<>=!~[ (":
            name = name.split(stop)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def test_device_install_has_no_fleet_module_or_dependency(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # A copy, so building leaves nothing (build/, *.egg-info) in the checkout.
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / item, src / item)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    shutil.copytree(REPO / "edge_agent", src / "edge_agent", ignore=ignore)
    shutil.copytree(REPO / "shared", src / "shared", ignore=ignore)
    wheels = tmp_path / "wheels"
    for project in (src / "shared", src):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
             "--wheel-dir", str(wheels), str(project)],
            check=True, capture_output=True, text=True,
        )
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in built] == ["edge_agent", "edge_shared"], built

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", *map(str, wheels.glob("*.whl"))],
        check=True, capture_output=True, text=True,
    )
    report = subprocess.run(
        [str(python), "-c", (
            "import importlib.metadata as m, importlib.util as u, json\n"
            "dists = {d.metadata['Name']: d for d in m.distributions()}\n"
            "ours = [dists['edge-agent'], dists['edge-shared']]\n"
            "print(json.dumps({\n"
            "  'files': [str(f) for d in ours for f in (d.files or [])],\n"
            "  'requires': [r for d in ours for r in (d.requires or [])],\n"
            "  'edgectl': u.find_spec('edgectl') is not None,\n"
            "  'scripts': sorted(e.name for d in ours for e in d.entry_points if e.group == 'console_scripts'),\n"
            "}))"
        )],
        check=True, capture_output=True, text=True,
    )
    installed = json.loads(report.stdout)
    assert installed["edgectl"] is False
    assert installed["scripts"] == ["edge-agent"]
    top_level = {f.split("/")[0] for f in installed["files"] if f.endswith(".py")}
    assert top_level == {"edge_agent", "edge_shared"}
    assert not [f for f in installed["files"] if "fleet" in f or "edgectl" in f]
    needed = requirement_names(installed["requires"])
    assert "edge-shared" in needed and "pydantic" in needed  # the reading works
    assert needed & FLEET_ONLY == set()
    assert "tpm2-pytss" not in needed  # only the device's optional [tpm] extra


def test_fleet_side_needs_no_device_code_or_tpm_library() -> None:
    fleet = tomllib.loads((REPO / "fleet" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = requirement_names(fleet["dependencies"])
    assert "edge-shared" in needed
    assert needed & {"edge-agent", "tpm2-pytss", "podman", "sqlite-utils", "tenacity"} == set()
