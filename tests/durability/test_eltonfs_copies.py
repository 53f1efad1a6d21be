"""Issue 4 point 3 for eltonfs: a tree commit is acknowledged only once every chunk it introduces (its
new directory objects and the chunks of its changed files, which its manifest does not list) is on
``copies`` holders. Two real eltond processes in one cluster (copies = 2): a mount on A commits; B
holds the whole new tree before the commit returns, and serves it with A's daemon killed."""

from __future__ import annotations

import os
from pathlib import Path

from fs.tree import EMPTY_DIR, EMPTY_DIR_BYTES, FILE, Dir, decode_dir, walk
from mesh.client import Client
from tests.eltond_process import EltondProcess
from tests.fs.conftest import Host


def tree_chunks(c: Client, root: str) -> set[tuple[str, int]]:
    """Every chunk of the tree under ``root``: its directory objects and its files' chunks."""
    out: set[tuple[str, int]] = set()

    def load(h: str) -> Dir:
        data = EMPTY_DIR_BYTES if h == EMPTY_DIR else c.get_chunk(h)
        out.add((h, len(data)))
        return decode_dir(data)

    for _, e in walk(root, load):
        if e.kind == FILE:
            out.update(e.chunks)
    return out


def test_an_eltonfs_commit_is_on_two_hosts_before_it_returns(tmp_path: Path) -> None:
    a = EltondProcess(tmp_path / "a", "--cluster", "c1", "--role", "both").start()
    b: EltondProcess | None = None
    host: Host | None = None
    try:
        ca = a.client()
        st = ca.status()
        b = EltondProcess(tmp_path / "b", "--cluster", "c1", "--role", "node", "--join", st["gossip"],
                          "--token", ca.mesh_token()).start()
        cb = b.client()
        host = Host(tmp_path / "host", a.url, tmp_path / "run")
        host.eltonfs("init", "team/vol")
        mnt = host.mount("team/vol")
        big = os.urandom(6 * 1024 * 1024)
        (mnt / "big.bin").write_bytes(big)
        (mnt / "src" / "pkg").mkdir(parents=True)
        for i in range(40):  # many small files, as tar -x makes
            (mnt / "src" / "pkg" / f"m{i}.py").write_text(f"x = {i}\n" * (i + 1))
        (mnt / "empty").mkdir()
        assert "committed version 2" in host.eltonfs("commit", str(mnt), "-m", "first").stdout
        root = ca.manifest("team/vol", 2)["meta"]["root"]
        first = tree_chunks(ca, root)
        assert len(first) > 40
        assert cb.missing_chunks(sorted(h for h, _ in first)) == [], "B holds the whole committed tree"

        (mnt / "src" / "pkg" / "m3.py").write_text("edited\n")
        (mnt / "big.bin").unlink()
        (mnt / "new.txt").write_text("second commit\n")
        assert "committed version 3" in host.eltonfs("commit", str(mnt), "-m", "second").stdout
        second = tree_chunks(ca, ca.manifest("team/vol", 3)["meta"]["root"])
        assert cb.missing_chunks(sorted(h for h, _ in second)) == []

        host.umount(mnt)
        a.kill9()  # A's disk is gone as far as readers are concerned: B alone serves both trees
        for h, n in sorted(first | second):
            assert len(cb.get_chunk(h, n)) == n
    finally:
        if host is not None:
            host.cleanup()
        if b is not None:
            b.stop()
        a.stop()
