"""The project's own import graph has no circles (issue 23): a module's imports, at module level or
inside a function, never lead back to it. A lint of structure, not behaviour: a circle is what
made names move into the wrong module and re-export shims appear."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import project_sources

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ui", "app_pages")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in project_sources(REPO, PACKAGES, entrypoint=False)}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (``from core import audit`` -> core.audit)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m in known and m != name and m not in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_module_and_function_level_imports():
    g = import_graph()
    assert "core.jobs" in g["core.job_runner"]  # a module-level import
    assert "core.admin" in g["core.runner"]  # `from core import admin` inside a function
    assert len(g) > 40 and all(not m.startswith(("streamlit", "tensorflow")) for deps in g.values() for m in deps)


def test_no_import_circles_in_core_ui_and_pages():
    assert cycles(import_graph()) == []
