"""No import cycle among edge_agent's parts, function-level imports included.

A part is a package of edge_agent (desired, deployment, trust, ...) or one of its top-level
modules (config, store, ...). Every `import` and `from ... import` in every file counts, wherever
it is written (module level, inside a function, under TYPE_CHECKING), since a cycle hidden in a
function is still a cycle in the design. The test names each cycle and the lines that make it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import edge_agent

ROOT = Path(edge_agent.__file__).parent


def part_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "edge_agent" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(from part, to part) -> where ("file:line")."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        source = part_of(name)
        if source is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module or ""
                # `from edge_agent import config` imports the part config
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for target in targets:
                dest = part_of(target)
                if dest is not None and dest != source and (ROOT / dest).exists() | (ROOT / f"{dest}.py").exists():
                    edges[(source, dest)].append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one part (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle() -> None:
    """The check itself can fail: a made-up a -> b -> a is reported."""
    assert cycles({("a", "b"): ["x:1"], ("b", "a"): ["y:2"], ("b", "c"): ["z:3"]}) == [["a", "b"]]
    assert cycles({("a", "b"): ["x:1"], ("b", "c"): ["z:3"]}) == []


def test_the_checker_sees_function_level_imports() -> None:
    edges = import_edges()
    assert edges, "no imports found: the checker reads nothing"
    # daemon.py imports its components inside build_components(): those count.
    assert ("daemon", "desired") in edges


def test_no_import_cycle_among_edge_agent_parts() -> None:
    edges = import_edges()
    found = cycles(edges)
    lines = []
    for component in found:
        members = set(component)
        lines.append(" <-> ".join(component))
        for (a, b), where in sorted(edges.items()):
            if a in members and b in members:
                lines.append(f"    {a} -> {b}: {', '.join(where[:4])}")
    assert not found, "import cycles among edge_agent's parts:\n" + "\n".join(lines)
