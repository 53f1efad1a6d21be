"""The membership and admission cores import no I/O, clock or thread module and use no global random."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_IO = {"asyncio", "socket", "time", "threading", "uvloop", "asyncio_dgram", "os", "pathlib", "selectors"}
CORE_FILES = sorted([*(ROOT / "mesh/core/membership").glob("*.py"), ROOT / "mesh/core/admission.py",
                     ROOT / "mesh/core/vivaldi.py"])


def imported_modules(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_is_sans_io(path):
    tree = ast.parse(path.read_text())
    bad = [m for m in imported_modules(tree) if m.split(".")[0] in NO_IO]
    assert not bad, f"{path.name} imports {bad}"
    global_random = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and
                     isinstance(n.value, ast.Name) and n.value.id == "random" and n.attr != "Random"]
    assert not global_random, f"{path.name} uses random.{global_random}"
