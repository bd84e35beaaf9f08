"""The source tree's shape: module sizes, import cycles, and pure packages free of I/O.

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
    "mesh_llm.mesh.gossip",
    "mesh_llm.transport._handshake",
    "mesh_llm.transport._credit",
    "mesh_llm.split._election",
    "mesh_llm.split._decisions",
    "mesh_llm.node.status",
    "mesh_llm.discovery._listing",
    "mesh_llm.discovery._scoring",
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


def test_pure_modules_import_no_io_library() -> None:
    modules = _modules()
    offenders = {
        name: sorted(t for t in _imports(name, p, modules) if t.split(".")[0] in IO_LIBRARIES)
        for name, p in modules.items()
        if any(name == pure or name.startswith(pure + ".") for pure in PURE)
    }
    assert {k: v for k, v in offenders.items() if v} == {}
