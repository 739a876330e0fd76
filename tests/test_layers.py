"""Dependencies point one way (docs/architecture.md, "Layers"):

    core (conceptgen.*)  <-  review (conceptgen.review)  <-  {annotator, tcav}  <-  top (CLI, demo)

Every import of every module, at module level or inside a function, is read with
``ast``: an import that points to a higher layer, one between the two siblings
(annotator and tcav), or any import cycle fails with the modules that make it.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("conceptgen", "annotator", "tcav", "migrations")
TOP = ("conceptgen.cli", "conceptgen.demo", "conceptgen.__main__")
RANK = {"core": 0, "review": 1, "annotator": 2, "tcav": 2, "top": 3}


def layer_of(module: str) -> str:
    if any(module == t or module.startswith(t + ".") for t in TOP):
        return "top"
    if module == "conceptgen.review" or module.startswith("conceptgen.review."):
        return "review"
    root = module.split(".")[0]
    return root if root in ("annotator", "tcav") else "core"


def project_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` needs a.b.c; an attribute resolves to its module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, set(modules)) for m, p in modules.items()}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            la, lb = layer_of(a), layer_of(b)
            if la != lb and RANK[la] <= RANK[lb]:
                bad.append(f"{a} ({la}) imports {b} ({lb})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_points_to_a_higher_layer_or_a_sibling():
    assert upward_edges(import_graph()) == []


def test_there_are_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_walk_sees_function_level_imports_and_the_checks_catch_back_edges():
    graph = import_graph()
    # a function-level import (export.py reads clip files through videoio inside functions)
    assert "conceptgen.videoio" in graph["conceptgen.concepts"]
    assert "conceptgen.review.decisions" in graph["annotator.views.api"]
    fake = {**graph, "conceptgen.export": graph["conceptgen.export"] | {"tcav.examples"}}
    assert upward_edges(fake) == ["conceptgen.export (core) imports tcav.examples (tcav)"]
    assert ["conceptgen.export", "tcav.examples"] in cycles(fake)
    sibling = {**graph, "annotator.queries": graph["annotator.queries"] | {"tcav.results"}}
    assert upward_edges(sibling) == ["annotator.queries (annotator) imports tcav.results (tcav)"]
