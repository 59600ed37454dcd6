"""The project's import graph, drawn from the source (function-local imports included): no cycle.

A cycle hidden by a function-local import still couples two modules both ways; the layering is
core <- eval/train <- services <- CLI, with benchmarks on top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rstitch_core", "rstitch_eval", "rstitch_train", "services", "rstitch_cli", "benchmarks")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    mods = modules()

    def owner(name: str) -> str | None:  # "a.b.C" -> "a.b" when a/b.py exists
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {t for t in map(owner, names) if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "rstitch_core.policies.loop" in graph["rstitch_core.engine"]
    assert cycles(graph) == []


def test_layers_import_only_downwards():
    below = {"rstitch_core": set(), "rstitch_eval": {"rstitch_core"}, "rstitch_train": {"rstitch_core", "rstitch_eval"},
             "services": {"rstitch_core"}, "rstitch_cli": set(PACKAGES) - {"rstitch_cli", "benchmarks"}}
    wrong = [(m, t) for m, targets in import_graph().items() for t in targets
             if m.split(".")[0] in below and t.split(".")[0] != m.split(".")[0]
             and t.split(".")[0] not in below[m.split(".")[0]]]
    assert wrong == []


def test_function_local_imports_in_core_and_services_say_why():
    """An import inside a function hides a dependency (or a cycle): in the core and the services
    each one carries its reason on its line."""
    silent = []
    for module, path in modules().items():
        if not module.startswith(("rstitch_core", "services")):
            continue
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                silent += [f"{module}:{n.lineno}" for n in ast.walk(fn)
                           if isinstance(n, (ast.Import, ast.ImportFrom)) and "#" not in lines[n.lineno - 1]]
    assert silent == []
