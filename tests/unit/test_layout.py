"""The source tree's shape: module sizes, import cycles, arrows that point down, private modules
kept private, and pure packages free of I/O.

The architecture is meant to be read from the tree (one concern a module, pure planning apart
from the processes and sockets that carry it out); these checks keep it that way as code grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "mesh_llm"
MAX_LINES = 400
# Packages whose modules decide without doing: no event loop, sockets, HTTP, processes or llama.cpp.
PURE = (
    "mesh_llm.planning",
    "mesh_llm.peer.wire",
    "mesh_llm.peer.token",
    "mesh_llm.peer.rtt",
    "mesh_llm.mesh.gossip",
    "mesh_llm.transport._handshake",
    "mesh_llm.transport._credit",
    "mesh_llm.split._election",
    "mesh_llm.split._decisions",
    "mesh_llm.split.claims",
    "mesh_llm.split.host_election",
    "mesh_llm.split.states",
    "mesh_llm.models.states",
    "mesh_llm.node.status",
    "mesh_llm.discovery._listing",
    "mesh_llm.discovery._scoring",
    "mesh_llm.api.prefix",
)
IO_LIBRARIES = frozenset(
    {
        "asyncio",
        "socket",
        "subprocess",
        "ctypes",
        "httpx",
        "httpcore",
        "fastapi",
        "uvicorn",
        "llama_cpp",
        "qh3",
        "aioquic",
    }
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module `name` imports, at any depth (TYPE_CHECKING blocks and functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        found.update(targets)
    return found


def _internal(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_module_is_over_400_lines() -> None:
    long = {name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_import_cycles_not_even_behind_type_checking() -> None:
    modules = _modules()
    graph = {
        name: {d for t in _imports(name, p, modules) if (d := _internal(t, modules)) and d != name}
        for name, p in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def _packages(modules: dict[str, Path]) -> set[str]:
    return {name for name, path in modules.items() if path.name == "__init__.py"}


def _places(importer: str, imported: str) -> tuple[str, str] | None:
    """The two sibling places (packages or modules under one parent) an arrow runs between.

    ``mesh_llm.mesh.service -> mesh_llm.transport._endpoint`` runs from ``mesh_llm.mesh`` to
    ``mesh_llm.transport``; an arrow into or out of a package's own ``__init__`` runs between no
    two siblings.
    """
    a, b = importer.split("."), imported.split(".")
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    if shared >= len(a) or shared >= len(b):
        return None
    return ".".join(a[: shared + 1]), ".".join(b[: shared + 1])


def test_no_two_packages_import_each_other_at_any_depth() -> None:
    modules = _modules()
    packages = _packages(modules)
    arrows: dict[tuple[str, str], list[str]] = {}
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            found = _internal(target, modules)
            if found and (places := _places(name, found)):
                arrows.setdefault(places, []).append(f"{name} -> {found}")
    both_ways = {
        f"{a} <-> {b}": sorted({*arrows[(a, b)], *arrows[(b, a)]})
        for a, b in arrows
        if a < b and (b, a) in arrows and (a in packages or b in packages)
    }
    assert both_ways == {}


def _home(owner: str, private: str, packages: set[str]) -> str:
    """Where a private name may be imported from: a `_module`'s package, or the package of the
    module that defines a `_name`."""
    return owner if owner in packages else owner.rpartition(".")[0]


def test_no_module_imports_another_packages_private_module_or_name() -> None:
    modules = _modules()
    packages = _packages(modules)
    reaches = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and not node.level
                and (node.module or "").startswith("mesh_llm")
            ):
                paths = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                paths = [a.name for a in node.names if a.name.startswith("mesh_llm")]
            else:
                continue
            for dotted in paths:
                parts = dotted.split(".")
                i = next(
                    (i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None
                )
                if i is None:
                    continue
                home = _home(".".join(parts[:i]), parts[i], packages)
                if package != home and not package.startswith(home + "."):
                    reaches.append(f"{name} -> {'.'.join(parts[: i + 1])}")
    assert sorted(set(reaches)) == []


def test_pure_modules_import_no_io_library() -> None:
    modules = _modules()
    offenders = {
        name: sorted(t for t in _imports(name, p, modules) if t.split(".")[0] in IO_LIBRARIES)
        for name, p in modules.items()
        if any(name == pure or name.startswith(pure + ".") for pure in PURE)
    }
    assert {k: v for k, v in offenders.items() if v} == {}
