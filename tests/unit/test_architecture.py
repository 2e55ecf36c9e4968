"""The import rules of the package layout (README "Layout", docs/architecture.md).

Layers, lowest first: data -> features -> core -> {fl, edge} -> deploy -> cli. A module may import its
own package and lower layers; fl and edge never import each other; telemetry is a leaf that fl, edge,
deploy and cli may import. Every import counts, module-level and in-function, absolute and relative.
core, data and features never import flwr; edge never imports torch or flwr, not even through the
modules it imports (checked statically here and in a fresh interpreter below).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "iotad"

RANK = {"data": 0, "features": 1, "core": 2, "fl": 3, "edge": 3, "deploy": 4, "cli": 5}
TELEMETRY_USERS = {"fl", "edge", "deploy", "cli"}
SIBLINGS = {frozenset({"fl", "edge"})}
FORBIDDEN = {  # layer -> third-party top-level packages it must never import
    "data": {"flwr"},
    "features": {"flwr"},
    "core": {"flwr"},
    "edge": {"flwr", "torch"},
    "telemetry": {"flwr", "torch"},
}
EDGE_ENTRY_POINTS = ("iotad.edge.agent", "iotad.edge.run")
TORCH_FREE_LAUNCHERS = ("iotad.deploy.aggregator", "iotad.deploy.device")


@dataclass(frozen=True)
class Import:
    module: str  # the importing iotad module
    target: str  # the imported module (an iotad module, or a third-party dotted name)
    line: int
    lazy: bool  # inside a function


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """The iotad module ``name`` refers to (``iotad.core.bundle.Bundle`` -> ``iotad.core.bundle``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    lazy_lines = {
        n.lineno
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    for node in ast.walk(tree):
        lazy = node.lineno in lazy_lines if isinstance(node, ast.Import | ast.ImportFrom) else False
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source == "__future__":
                continue
            for alias in node.names:
                # ``from iotad.core import local_steps`` imports a module, ``from iotad.core.x import f`` a name.
                sub = f"{source}.{alias.name}"
                yield Import(module, sub if sub in MODULES else source, node.lineno, lazy)


IMPORTS = [imp for m in MODULES for imp in imports_of(m)]


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # "iotad" itself has no layer


def internal(imp: Import) -> bool:
    return imp.target == "iotad" or imp.target.startswith("iotad.")


def where(imp: Import) -> str:
    return f"{MODULES[imp.module].relative_to(ROOT)}:{imp.line} imports {imp.target}" + (" (lazy)" if imp.lazy else "")


def allowed(src: str, dst: str) -> bool:
    if src == dst:
        return True
    if dst == "telemetry":
        return src in TELEMETRY_USERS
    if src == "telemetry" or frozenset({src, dst}) in SIBLINGS:
        return False
    return RANK[dst] < RANK[src]


def test_every_module_has_a_layer() -> None:
    unknown = {layer(m) for m in MODULES} - {*RANK, "telemetry", None}
    assert not unknown, f"packages without a layer in this test: {sorted(unknown)}"  # type: ignore[type-var]


def test_imports_follow_the_layers() -> None:
    bad = []
    for imp in filter(internal, IMPORTS):
        src, dst = layer(imp.module), layer(resolve(imp.target))
        if src is not None and dst is not None and not allowed(src, dst):
            bad.append(f"{where(imp)}: {src} may not import {dst}")
    assert not bad, "imports against the layer direction:\n" + "\n".join(bad)


def test_forbidden_third_party_imports() -> None:
    bad = []
    for imp in IMPORTS:
        lay = layer(imp.module)
        top = imp.target.split(".")[0]
        if lay in FORBIDDEN and top in FORBIDDEN[lay]:
            bad.append(f"{where(imp)}: {lay} never imports {top}")
    assert not bad, "\n".join(bad)


def _closure(start: str) -> dict[str, str]:
    """iotad modules imported at module level from ``start``, transitively (module -> who imported it)."""
    seen = {start: ""}
    todo = [start]
    while todo:
        m = todo.pop()
        for imp in imports_of(m):
            target = resolve(imp.target)
            if not imp.lazy and internal(imp) and target not in seen:
                seen[target] = m
                todo.append(target)
    return seen


@pytest.mark.parametrize("module", [m for m in MODULES if layer(m) == "edge"])
def test_edge_reaches_no_torch_or_flwr(module: str) -> None:
    bad = []
    for m, parent in _closure(module).items():
        for imp in imports_of(m):
            if not imp.lazy and imp.target.split(".")[0] in FORBIDDEN["edge"]:
                bad.append(f"{where(imp)} (reached from {module} via {parent or 'itself'})")
    assert not bad, "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in filter(internal, IMPORTS):
        target = resolve(imp.target)
        # A package's __init__ is imported before its submodules: only count it when named itself.
        if target != imp.module and target != "iotad":
            graph[imp.module].add(target)
    return graph


def test_no_module_cycle() -> None:
    cycle = _cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_package_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for src, targets in module_graph().items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if a and b and a != b:
                graph.setdefault(a, set()).add(b)
    cycle = _cycle(graph)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", EDGE_ENTRY_POINTS)
def test_device_agent_imports_neither_torch_nor_flwr(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not loaded & {"torch", "flwr"}, f"import {module} loads {sorted(loaded & {'torch', 'flwr'})}"


@pytest.mark.parametrize("module", TORCH_FREE_LAUNCHERS)
def test_launchers_do_not_import_torch(module: str) -> None:
    assert "torch" not in _loaded_after_import(module), f"import {module} loads torch"
