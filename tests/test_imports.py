"""No import circles between db3d's modules (module-level imports; an import inside a function is
a deliberate late import and does not count)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "db3d"
# none left: the report's build.py <-> groundtruth.py circle was split by issue 21 (db3d/report/common.py)
KNOWN: set[frozenset] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import variants` names a module
                if f"{target}.{alias.name}" in modules:
                    out.add(f"{target}.{alias.name}")
            if target in modules:
                out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    paths = sorted(PKG.rglob("*.py"))
    modules = {_module(p) for p in paths}
    return {_module(p): _imports(p, modules) for p in paths}


def test_no_import_circles():
    graph = _graph()
    cycles = set()
    for start in graph:  # every pair a -> ... -> b -> ... -> a, reported as its two ends
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.add(frozenset({start, node}))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    # a module importing its own package's __init__ (which re-exports it lazily) is no circle
    cycles = {c for c in cycles if len(c) == 2 and not any(a.startswith(b + ".") or b.startswith(a + ".")
                                                         for a in c for b in c if a != b)}
    assert cycles <= KNOWN, sorted(tuple(sorted(c)) for c in cycles - KNOWN)


def test_the_data_circle_is_gone():
    """data/prompts.py imported data/build.py (inside write_tables) while build imported prompts:
    now both import data/source.py, and prompts imports build nowhere, not even late."""
    tree = ast.parse((PKG / "data" / "prompts.py").read_text(encoding="utf-8"))
    late = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "build" not in late and "source" in late
    assert "db3d.data.source" in _graph()["db3d.data.build"]
