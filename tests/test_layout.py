"""The tree's layout contract (ADR 0020, issue 14): imports only go down the stages, and no
module imports itself back through others.

Layers, bottom up: the base modules (``errors``, ``schema``, ``clikit``, the package root),
``model``, then the stages in data-flow order. Each package may import the base, ``model`` and
the packages listed for it in :data:`ALLOWED`: the stages whose output it consumes. Every import
counts, also one inside a function, since a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pipeline"
BASE = frozenset(
    {"pipeline", "errors", "schema", "clikit", "cluster", "outdir", "workers", "snapshot"}
)
#: package -> the packages (besides BASE) it may import
ALLOWED: dict[str, frozenset[str]] = {
    "model": frozenset(),
    "lab": frozenset({"model"}),
    "ingest": frozenset({"model"}),
    "synth": frozenset({"model"}),
    "replay": frozenset({"model"}),
    "sweep": frozenset({"model", "synth", "replay"}),
    "analyze": frozenset({"model", "ingest", "replay"}),
    "cli": frozenset({"model", "lab", "ingest", "synth", "replay", "sweep", "analyze"}),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of the tree."""
    path = ROOT.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported pipeline module) of every import in ``path``, relative ones resolved;
    ``from pipeline.x import y`` counts as an import of ``pipeline.x.y`` when y is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "pipeline" or target.startswith("pipeline."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield node.lineno, sub if is_module(sub) else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline"):
                    yield node.lineno, alias.name


def layer(module: str) -> str:
    """The package a module belongs to (``pipeline.replay.kvm`` -> ``replay``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


def graph() -> dict[str, set[tuple[int, str]]]:
    return {module_name(p): set(imports(p)) for p in sorted(ROOT.rglob("*.py"))}


def climbing(edges: dict[str, set[tuple[int, str]]]) -> list[str]:
    """``file:line: a -> b`` for every import a package may not make."""
    bad = []
    for mod, deps in edges.items():
        src = layer(mod)
        if (src in BASE and src != "pipeline") or src == "pipeline":
            allowed = BASE
        elif src in ALLOWED:
            allowed = BASE | ALLOWED[src] | {src}
        else:
            bad.append(f"{mod}: package {src!r} is not in the layout contract")
            continue
        for line, dep in sorted(deps):
            if layer(dep) not in allowed:
                bad.append(f"{mod}:{line}: {src} may not import {dep}")
    return bad


def cycles(edges: dict[str, set[tuple[int, str]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), package roots aside:
    ``from pipeline.ingest import ftrace`` names the submodule, not the package."""
    adj = {m: {d for _, d in deps if d in edges and d != m} for m, deps in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
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

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def test_imports_only_go_down() -> None:
    assert climbing(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("pipeline.replay.engine", "from pipeline.ingest.derive import x\n", "replay may not"),
        ("pipeline.model.vmmodel", "from pipeline.replay import kvm\n", "model may not"),
        ("pipeline.ingest.reader", "import pipeline.analyze.views\n", "ingest may not"),
        ("pipeline.synth.spec", "from pipeline.lab.host import x\n", "synth may not"),
    ],
)
def test_a_climbing_import_is_caught(module: str, source: str, rule: str, tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    edges = graph()
    edges[module] = {(line, dep) for line, dep in imports_of_text(path)}
    assert any(rule in b for b in climbing(edges))


def test_a_cycle_is_caught() -> None:
    edges = graph()
    edges["pipeline.model.knobs"] = {*edges["pipeline.model.knobs"], (1, "pipeline.model.vmmodel")}
    assert ["pipeline.model.knobs", "pipeline.model.vmmodel"] in cycles(edges)


def imports_of_text(path: Path) -> Iterator[tuple[int, str]]:
    """Absolute imports of a scratch file (no relative imports to resolve)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            yield node.lineno, str(node.module)
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("pipeline"))
