from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.eltond_process import EltondProcess


@pytest.fixture
def eltond(tmp_path: Path) -> Iterator[EltondProcess]:
    """A fresh eltond on a free loopback port with its own data dir."""
    d = EltondProcess(tmp_path / "node").start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shared_eltond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EltondProcess]:
    """One eltond for a module's read-mostly tests (each test uses its own keys)."""
    d = EltondProcess(tmp_path_factory.mktemp("shared") / "node").start()
    yield d
    d.stop()
