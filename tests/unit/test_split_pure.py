"""The split decisions and the claims schema stay pure: no I/O library is imported there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mesh_llm

PURE = [
    "split/claims.py",
    "planning/records.py",
    "split/_election.py",
    "split/_decisions.py",
    "split/_preview.py",
    "node/status.py",
]
IO = {"asyncio", "socket", "httpx", "fastapi", "uvicorn", "llama_cpp", "ctypes", "subprocess", "shutil"}


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_library(module: str) -> None:
    tree = ast.parse((Path(mesh_llm.__file__).parent / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & IO
