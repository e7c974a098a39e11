"""Dependencies between gpu_backend's packages run one way: the run-time import graph, read from
the code, has no cycle, the torch.distributed primitives (``parallel``) import nothing of ours,
and the cluster of TP×PP instances knows nothing of prefill/decode (``disagg`` plugs into it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import gpu_backend

ROOT = Path(gpu_backend.__file__).parent
GROUND_FLOOR = "parallel"  # process groups, collectives, point-to-point: torch.distributed only


def unit(path: Path) -> str:
    """The package (or top-level module) of gpu_backend that ``path`` belongs to."""
    parts = path.relative_to(ROOT).parts
    return parts[0].removesuffix(".py")


def imported_units(path: Path) -> Iterator[str]:
    """gpu_backend's packages and modules that ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.If) and "TYPE_CHECKING" in
               ast.unparse(guard.test) for statement in guard.body for node in ast.walk(statement)}
    package = path.relative_to(ROOT.parent).parts[:-1]  # ("gpu_backend", "engine") for gpu_backend/engine/x.py
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + ([f"{module}.{alias.name}" for alias in node.names] if not node.module else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "gpu_backend" and parts[1] != "__init__":
                yield parts[1]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        source = unit(path)
        if source == "__init__":
            continue
        targets = {target for target in imported_units(path) if target != source and
                   ((ROOT / target).is_dir() or (ROOT / f"{target}.py").is_file())}
        graph.setdefault(source, set()).update(targets)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_gpu_backends_packages() -> None:
    assert cycles(import_graph()) == []


def test_the_distributed_primitives_import_nothing_of_ours() -> None:
    assert import_graph().get(GROUND_FLOOR, set()) == set()


def test_the_cluster_never_imports_disaggregation() -> None:
    graph = import_graph()
    assert "disagg" not in graph["cluster"]
    assert "cluster" in graph["disagg"]  # disagg plugs into the cluster, not the other way round
