"""The tree, overlay, merge and protocol modules stay free of I/O, so they can be tested and simulated alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FS = Path(__file__).resolve().parents[2] / "fs"
PURE = ["tree.py", "overlay.py", "merge.py", "fuse_wire.py"]
IO_MODULES = {"os", "io", "socket", "select", "selectors", "subprocess", "threading", "multiprocessing",
              "asyncio", "trio", "pyfuse3", "sqlite3", "shutil", "pathlib", "tempfile", "time", "random",
              "http", "urllib", "fcntl", "ctypes", "mmap", "logging", "signal"}
ALLOWED_LOCAL = ("fs.tree", "fs.overlay", "fs.merge", "fs.fuse_wire", "mesh.core", "mesh.errors")


def imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("name", PURE)
def test_pure_module_has_no_io_imports(name: str) -> None:
    for mod in imports(FS / name):
        top = mod.split(".")[0]
        assert top not in IO_MODULES, f"fs/{name} imports {mod}"
        if top in ("fs", "mesh"):
            assert mod.startswith(ALLOWED_LOCAL), f"fs/{name} imports {mod}, which is not pure"
