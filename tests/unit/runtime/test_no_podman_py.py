"""The agent does without podman-py and requests: every edge_agent module imports in an
interpreter where they cannot be imported (they may still be installed in a dev venv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import importlib, importlib.abc, pkgutil, sys

BLOCKED = {"podman", "requests", "urllib3", "paramiko", "charset_normalizer"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
import edge_agent
for module in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
    importlib.import_module(module.name)
print("imported", len([m for m in sys.modules if m.startswith("edge_agent")]))
"""


def test_every_module_imports_without_podman_py_or_requests() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported ")
    assert int(out.stdout.split()[1]) > 50
