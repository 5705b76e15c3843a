#!/usr/bin/env python3
"""What importing the podman adapter costs in resident memory, against `import asyncio` alone.

Each row is a fresh interpreter (this one's executable) that imports asyncio, reads VmRSS from
/proc/self/status, imports the target, and reads VmRSS again; rows run --runs times and the
median is shown. The adapter is imported from every --tree given (default: this checkout), so
two checkouts (say main and a branch) are compared in the same run; --module adds rows for any
other importable module (e.g. httpx, aiohttp, podman.api) under the same interpreter.

    python3 bench/runtime_import_rss.py
    python3 bench/runtime_import_rss.py --tree /work/main --tree . --module podman.api
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import asyncio, json, sys
def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss_kb()
target = sys.argv[1]
if target:
    __import__(target)
print(json.dumps({"before": before, "after": rss_kb(),
                  "file": getattr(sys.modules.get(target), "__file__", None) if target else None}))
"""


def measure(target: str, tree: Path | None, runs: int) -> tuple[float, float, str | None]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    befores, afters, where = [], [], None
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, target], capture_output=True, text=True, env=env,
            cwd=tree or "/", check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"import {target} failed:\n{out.stderr.strip().splitlines()[-1]}")
        doc = json.loads(out.stdout)
        befores.append(doc["before"])
        afters.append(doc["after"])
        where = doc["file"]
    return statistics.median(befores) / 1024, statistics.median(afters) / 1024, where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="checkout to import edge_agent from (repeatable)")
    parser.add_argument("--module", action="append", default=[], help="another module to import (repeatable)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [REPO_ROOT])]

    _, base_after, _ = measure("", None, args.runs)
    rows = [("import asyncio (baseline)", base_after, 0.0, "")]
    for tree in trees:
        # the package root alone (edge_agent/__init__.py), then the adapter with everything it pulls in
        for target in ("edge_agent", "edge_agent.runtime.podman"):
            before, after, where = measure(target, tree, args.runs)
            rows.append((f"{target}  [{tree}]", after, after - before, where or ""))
    for module in args.module:
        before, after, where = measure(module, None, args.runs)
        rows.append((f"{module}", after, after - before, where or ""))

    print(f"{sys.executable} (Python {sys.version.split()[0]}), median of {args.runs} fresh interpreters\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'import':<{width}}  {'RSS MB':>7}  {'+ on asyncio MB':>15}  {'x baseline':>10}")
    for name, after, delta, _where in rows:
        print(f"{name:<{width}}  {after:7.1f}  {delta:15.1f}  {after / base_after:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
