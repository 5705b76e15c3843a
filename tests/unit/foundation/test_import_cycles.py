"""No import cycle among edge_agent's parts, function-level imports included.

A part is a package of edge_agent (desired, deployment, trust, ...) or one of its top-level
modules (config, store, ...). Every import counts, wherever it is written (module level, inside a
function, under TYPE_CHECKING): a cycle hidden in a function is still a cycle in the design. The
walker and the cycle finder are test_import_graph.py's (which checks the sides' direction and the
module graphs of edge_shared and edgectl); this test names each cycle and the lines that make it."""

from __future__ import annotations

from collections import defaultdict

from tests.unit.foundation.test_import_graph import MODULES, REPO, cycles, imported


def part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "edge_agent" and len(parts) > 1 else None


def part_edges() -> dict[tuple[str, str], list[str]]:
    """(from part, to part) -> where ("file:line")."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in sorted(MODULES.items()):
        source = part(module)
        if source is None:
            continue
        for line, target in imported(module, path):
            dest = part(target) if target in MODULES or target.startswith("edge_agent.") else None
            if dest is not None and dest != source:
                edges[(source, dest)].append(f"{path.relative_to(REPO)}:{line}")
    return edges


def part_cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph[b]
    return cycles(dict(graph))


def test_the_checker_sees_function_level_imports_and_finds_a_cycle() -> None:
    edges = part_edges()
    # daemon.py imports its components inside build_components(): those count.
    assert ("daemon", "desired") in edges
    assert part_cycles({("a", "b"): ["x:1"], ("b", "a"): ["y:2"], ("b", "c"): ["z:3"]}) == [["a", "b"]]
    assert part_cycles({("a", "b"): ["x:1"], ("b", "c"): ["z:3"]}) == []


def test_no_import_cycle_among_edge_agent_parts() -> None:
    edges = part_edges()
    found = part_cycles(edges)
    lines = []
    for component in found:
        members = set(component)
        lines.append(" <-> ".join(component))
        for (a, b), where in sorted(edges.items()):
            if a in members and b in members:
                lines.append(f"    {a} -> {b}: {', '.join(where[:4])}")
    assert not found, "import cycles among edge_agent's parts:\n" + "\n".join(lines)
