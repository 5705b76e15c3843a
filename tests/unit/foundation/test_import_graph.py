"""The sides import only downward: edge_shared (the leaf) imports neither side, the device agent
(edge_agent) and the fleet side (edgectl) never import each other, none of them imports the test
infrastructure (devinfra) or the tests; and neither the shared leaf nor the fleet side has an
import cycle. Every import counts, also the ones inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = {
    "edge_agent": REPO / "edge_agent",
    "edge_shared": REPO / "shared" / "edge_shared",
    "edgectl": REPO / "fleet" / "edgectl",
}
FORBIDDEN = {
    "edge_shared": {"edge_agent", "edgectl", "devinfra", "tests"},
    "edge_agent": {"edgectl", "devinfra", "tests"},
    "edgectl": {"edge_agent", "devinfra", "tests"},
}
ACYCLIC = ("edge_shared", "edgectl")


def module_files(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = {name: path for package in PACKAGES for name, path in module_files(package).items()}


def imported(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file, relative ones resolved; `from P import n`
    names the module P.n when that is a module, else P."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else source


def graph(package: str) -> dict[str, set[str]]:
    own = {m for m in MODULES if m == package or m.startswith(package + ".")}
    return {m: {t for _, t in imported(m, MODULES[m]) if t in own and t != m} for m in own}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_direction(package: str) -> None:
    wrong = [
        f"{MODULES[m].relative_to(REPO)}:{line} imports {target}"
        for m in sorted(MODULES)
        if m == package or m.startswith(package + ".")
        for line, target in imported(m, MODULES[m])
        if target.split(".")[0] in FORBIDDEN[package]
    ]
    assert wrong == []


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_import_cycle(package: str) -> None:
    assert cycles(graph(package)) == []


def test_the_checks_see_what_they_check() -> None:
    """The walker finds function-level and relative imports, and a cycle when there is one."""
    assert len(MODULES) > 100
    assert {"edgectl.cli", "edge_shared.protocol", "edge_agent.daemon"} <= set(MODULES)
    # edgectl.cli imports rollout_cmd inside a function only.
    assert "edgectl.rollout_cmd" in graph("edgectl")["edgectl.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
