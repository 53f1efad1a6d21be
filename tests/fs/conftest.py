"""Fixtures that mount eltonfs for real against a real eltond, and always unmount."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.eltond_process import EltondProcess

_names = itertools.count()


class Host:
    """One simulated host: its own cache directory (so its own chunk cache and mount state)."""

    def __init__(self, root: Path, url: str, run_dir: Path) -> None:
        self.root = root
        self.url = url
        self.cache = root / "cache"
        self.env = {**os.environ, "ELTON_HOST": url, "ELTONFS_CACHE_DIR": str(self.cache),
                    "ELTONFS_RUN_DIR": str(run_dir)}
        self.mounts: list[Path] = []

    def eltonfs(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "fs.cli", *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"eltonfs {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def mount(self, spec: str, name: str = "mnt") -> Path:
        mnt = self.root / name
        mnt.mkdir(parents=True, exist_ok=True)
        self.mounts.append(mnt)
        self.eltonfs("mount", spec, str(mnt))
        assert os.path.ismount(mnt)
        return mnt

    def umount(self, mnt: Path) -> None:
        self.eltonfs("umount", str(mnt))
        assert not os.path.ismount(mnt)
        self.mounts.remove(mnt)

    def cleanup(self) -> None:
        for mnt in self.mounts:
            if os.path.ismount(mnt):
                if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EltondProcess]:
    d = EltondProcess(tmp_path_factory.mktemp("fsnode") / "node").start()
    yield d
    d.stop()


@pytest.fixture
def volume(node: EltondProcess, host_a: Host) -> str:
    name = f"vol{os.getpid()}-{next(_names)}"
    host_a.eltonfs("init", name)
    return name


def _host(tmp_path: Path, node: EltondProcess, name: str) -> Iterator[Host]:
    h = Host(tmp_path / name, node.url, tmp_path / "run")
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def host_a(tmp_path: Path, node: EltondProcess) -> Iterator[Host]:
    yield from _host(tmp_path, node, "a")


@pytest.fixture
def host_b(tmp_path: Path, node: EltondProcess) -> Iterator[Host]:
    yield from _host(tmp_path, node, "b")
