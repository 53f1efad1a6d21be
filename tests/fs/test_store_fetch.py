"""A lower file's fetch into the cache: one fetch for concurrent readers, whole and renamed when returned."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fs.store import Store
from tests.eltond_process import EltondProcess


def test_concurrent_file_path_calls_share_one_complete_fetch(tmp_path: Path, node: EltondProcess) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(9_000_000))
    writer = Store(node.client(), tmp_path / "writer")
    chunks = writer.cut_file(src, upload=True)
    writer.flush()
    assert len(chunks) > 1
    reader = Store(node.client(), tmp_path / "reader")
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
