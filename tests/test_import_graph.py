"""The import graph of ``src/toremi`` has no circles.

A circle (a worker module reaching back into its orchestrator, two drivers importing each other's
private names) means neither side can be read, tested or replaced alone. Every ``import`` counts,
the ones inside functions too: a lazy import hides a circle from Python, not from the reader.
Run this file as a script to print the graph's circles.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for p in sorted((src / "toremi").rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the toremi modules it imports (``from pkg import name`` counts as ``pkg.name``
    when that is a module, else as ``pkg``)."""
    mods = _modules(src)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in names:
                while name and name not in mods:  # import toremi.a.b.func -> toremi.a.b
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_circles_are_found():
    """The finder itself: a two-module circle written to disk is reported."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        pkg = Path(d) / "toremi"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "a.py").write_text("def f():\n    from toremi.b import g\n")
        (pkg / "b.py").write_text("from toremi import a\n")
        (pkg / "c.py").write_text("from toremi.a import f\n")
        assert circles(import_graph(Path(d))) == [["toremi.a", "toremi.b"]]


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles in src/toremi: " + "; ".join(" <-> ".join(c) for c in found)


if __name__ == "__main__":
    g = import_graph()
    found = circles(g)
    print(f"{len(g)} modules, {sum(map(len, g.values()))} edges, {len(found)} circles")
    for c in found:
        print("  " + " <-> ".join(c))
