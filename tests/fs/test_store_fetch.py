"""A lower file's fetch into the cache: one fetch for concurrent readers, whole and renamed when returned;
partial files of dead fetches are removed."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from fs.store import Store
from tests.eltond_process import EltondProcess


def _uploaded(tmp_path: Path, node: EltondProcess, size: int) -> tuple[Path, list, Store]:
    """A random file of ``size`` bytes uploaded through one Store; its chunks, and a second Store to read them."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    writer = Store(node.client(), tmp_path / "writer")
    chunks = writer.cut_file(src, upload=True)
    writer.flush()
    return src, chunks, Store(node.client(), tmp_path / "reader")


def test_concurrent_file_path_calls_share_one_complete_fetch(tmp_path: Path, node: EltondProcess) -> None:
    src, chunks, reader = _uploaded(tmp_path, node, 9_000_000)
    assert len(chunks) > 1
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(reader.file_path(chunks))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len(set(got)) == 1
    assert got[0].read_bytes() == src.read_bytes()
    assert os.listdir(got[0].parent) == [got[0].name], "no temporary file is left beside it"
    assert reader.file_path(()).read_bytes() == b""


def test_partial_files_of_dead_fetches_are_removed_and_never_served(tmp_path: Path, node: EltondProcess) -> None:
    src, chunks, reader = _uploaded(tmp_path, node, 3_000_000)
    final = reader.file_path(chunks)
    final.unlink()  # as if the mount had died while fetching it: only a partial file is left
    dead = subprocess.Popen(["true"])
    dead.wait()
    partial = final.with_name(f".{final.name}.{dead.pid}.1.tmp")
    partial.write_bytes(src.read_bytes()[:1000] + bytes(3_000_000 - 1000))  # full size, mostly not there
    alive = final.with_name(f".{final.name}.{os.getppid()}.1.tmp")
    alive.write_bytes(b"")
    assert reader.remove_stale_partials() == 1
    assert not partial.exists() and alive.exists()
    assert reader.file_path(chunks).read_bytes() == src.read_bytes()  # fetched again, never from a partial file
    alive.unlink()
