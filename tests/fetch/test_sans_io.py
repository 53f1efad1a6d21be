"""The fetch cores stay sans-IO: no clock, socket, thread, event loop or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["mesh/core/costs.py", "mesh/core/vivaldi.py", "mesh/core/holders.py", "mesh/core/cache_policy.py",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "mesh/core/fetch").glob("*.py"))]
FORBIDDEN = {"asyncio", "socket", "time", "threading", "uvloop", "asyncio_dgram", "os", "aiohttp"}


@pytest.mark.parametrize("path", MODULES)
def test_no_io_imports(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path} imports {name}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
            assert node.attr == "Random", f"{path} uses the global random.{node.attr}"
