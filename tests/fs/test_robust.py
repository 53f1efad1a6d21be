"""A mount outlives its daemon's restart; upper files go through FUSE passthrough; hard links survive a commit."""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.eltond_process import EltondProcess
from tests.fs.conftest import Host


def info(host: Host, mnt: Path) -> dict[str, object]:
    from fs.mount import request

    old = os.environ.get("ELTONFS_RUN_DIR")
    os.environ["ELTONFS_RUN_DIR"] = host.env["ELTONFS_RUN_DIR"]
    try:
        return request(mnt, {"op": "info"}, timeout=10)
    finally:
        if old is None:
            del os.environ["ELTONFS_RUN_DIR"]
        else:
            os.environ["ELTONFS_RUN_DIR"] = old


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[EltondProcess]:
    d = EltondProcess(tmp_path / "own-node").start()
    yield d
    d.stop()


def test_mount_survives_daemon_restart(tmp_path: Path, own_node: EltondProcess) -> None:
    a = Host(tmp_path / "a", own_node.url, tmp_path / "run")
    b = Host(tmp_path / "b", own_node.url, tmp_path / "run")
    try:
        a.eltonfs("init", "restart/vol")
        ma = a.mount("restart/vol")
        (ma / "cached.txt").write_text("read before the restart\n")
        (ma / "uncached.txt").write_text("first read after the daemon died\n")
        a.eltonfs("commit", str(ma))
        a.umount(ma)

        mb = b.mount("restart/vol")
        assert (mb / "cached.txt").read_text() == "read before the restart\n"
        port = own_node.url.rsplit(":", 1)[1]
        own_node.stop()

        assert (mb / "cached.txt").read_text() == "read before the restart\n"  # a new open, from the cache
        with pytest.raises(OSError) as exc:
            (mb / "uncached.txt").read_text()
        assert exc.value.errno == errno.EIO
        log = (b.cache / "mount.log").read_text()
        assert "cannot reach eltond" in log and "cached files keep working" in log
        (mb / "local.txt").write_text("written while the daemon is down\n")
        assert "A local.txt" in b.eltonfs("status", str(mb)).stdout
        r = b.eltonfs("commit", str(mb), check=False)
        assert r.returncode == 1 and "cannot reach eltond" in r.stderr and "local files are kept" in r.stderr

        own_node.start(http=f"127.0.0.1:{port}")
        assert (mb / "uncached.txt").read_text() == "first read after the daemon died\n"
        assert "committed version 3" in b.eltonfs("commit", str(mb)).stdout
        assert (mb / "local.txt").read_text() == "written while the daemon is down\n"
        b.umount(mb)
    finally:
        a.cleanup()
        b.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="FUSE passthrough needs CAP_SYS_ADMIN; the pyfuse3 engine runs then")
def test_upper_files_use_passthrough_and_commit_sees_every_write(host_a: Host, host_b: Host, volume: str) -> None:
    mnt = host_a.mount(volume)
    before = info(host_a, mnt)["fuse"]
    assert before["engine"] == "session" and before["passthrough"] is True  # type: ignore[index]
    block = os.urandom(8192)
    fd = os.open(mnt / "f.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    for _ in range(1024):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
    t0 = time.time_ns()
    time.sleep(0.01)
    with open(mnt / "f.bin", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:  # mmap writes land in the file too
        m[:5] = b"hello"
    st = os.stat(mnt / "f.bin")
    assert st.st_size == 8192 * 1024 and st.st_mtime_ns >= t0
    after = info(host_a, mnt)["fuse"]
    assert after["writes"] == before["writes"] and after["reads"] == before["reads"]  # type: ignore[index]
    expected = b"hello" + (block * 1024)[5:]
    assert (mnt / "f.bin").read_bytes() == expected
    host_a.eltonfs("commit", str(mnt))
    other = host_b.mount(volume)
    assert (other / "f.bin").read_bytes() == expected
    host_b.umount(other)
    host_a.umount(mnt)


def test_writer_while_a_lower_file_is_open_for_reading(host_a: Host, host_b: Host, volume: str) -> None:
    """The kernel forbids mixing passthrough and cached opens of one inode: a copy-up under a reader must work."""
    mnt = host_a.mount(volume)
    (mnt / "doc.txt").write_text("base\n")
    host_a.eltonfs("commit", str(mnt))
    host_a.umount(mnt)
    mnt = host_a.mount(volume, "fresh")
    with open(mnt / "doc.txt", "rb") as reader:
        assert reader.read() == b"base\n"
        with open(mnt / "doc.txt", "ab") as writer:
            writer.write(b"more\n")
        with open(mnt / "doc.txt", "rb") as second:
            assert second.read() == b"base\nmore\n"
    with open(mnt / "doc.txt", "ab") as writer:  # the inode has no open handle now: passthrough again
        writer.write(b"last\n")
    assert (mnt / "doc.txt").read_bytes() == b"base\nmore\nlast\n"
    host_a.eltonfs("commit", str(mnt))
    other = host_b.mount(volume)
    assert (other / "doc.txt").read_bytes() == b"base\nmore\nlast\n"
    host_b.umount(other)
    host_a.umount(mnt)


def test_hard_links_survive_a_commit(host_a: Host, volume: str) -> None:
    mnt = host_a.mount(volume)
    (mnt / "one").write_text("shared\n")
    os.link(mnt / "one", mnt / "two")
    host_a.eltonfs("commit", str(mnt))
    assert os.stat(mnt / "one").st_ino == os.stat(mnt / "two").st_ino and os.stat(mnt / "two").st_nlink == 2
    with open(mnt / "two", "a") as f:
        f.write("through the other name\n")
    assert (mnt / "one").read_text() == "shared\nthrough the other name\n"
    host_a.umount(mnt)


def test_hard_links_reach_another_host(host_a: Host, host_b: Host, volume: str) -> None:
    """A hard-link group committed on A is one inode on B: same st_ino, the group's st_nlink, and a write
    through one name (a copy-up on B) is read through the others, here and after B commits."""
    mnt = host_a.mount(volume)
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    (mnt / "d1" / "a").write_text("shared\n")
    os.link(mnt / "d1" / "a", mnt / "d2" / "b")
    os.link(mnt / "d1" / "a", mnt / "c")
    (mnt / "single").write_text("shared\n")  # same content, not a link: stays its own inode
    host_a.eltonfs("commit", str(mnt), "-m", "links")
    other = host_b.mount(volume)
    b = os.stat(other / "d2" / "b")  # the first name B meets is in d2: d1 and the root follow it
    a, c, single = os.stat(other / "d1" / "a"), os.stat(other / "c"), os.stat(other / "single")
    assert a.st_ino == b.st_ino == c.st_ino != single.st_ino
    assert (a.st_nlink, b.st_nlink, c.st_nlink, single.st_nlink) == (3, 3, 3, 1)
    with open(other / "d2" / "b", "a") as f:
        f.write("from B\n")
    assert (other / "d1" / "a").read_text() == (other / "c").read_text() == "shared\nfrom B\n"
    os.unlink(other / "c")
    assert os.stat(other / "d1" / "a").st_nlink == 2
    host_b.eltonfs("commit", str(other), "-m", "edit through a link")
    host_a.eltonfs("update", str(mnt))
    a, b = os.stat(mnt / "d1" / "a"), os.stat(mnt / "d2" / "b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2 and not (mnt / "c").exists()
    assert (mnt / "d1" / "a").read_text() == "shared\nfrom B\n"
    host_b.umount(other)
    third = host_b.mount(volume, "third")
    assert os.stat(third / "d1" / "a").st_ino == os.stat(third / "d2" / "b").st_ino
    assert os.stat(third / "d2" / "b").st_nlink == 2
    host_b.umount(third)
    host_a.umount(mnt)


def test_pyfuse3_engine_still_serves(host_a: Host, volume: str) -> None:
    host_a.env["ELTONFS_ENGINE"] = "pyfuse3"
    mnt = host_a.mount(volume)
    assert info(host_a, mnt)["fuse"] == {"engine": "pyfuse3"}
    (mnt / "d").mkdir()
    (mnt / "d" / "x").write_bytes(b"y" * 100_000)
    assert (mnt / "d" / "x").read_bytes() == b"y" * 100_000
    assert "A d" in host_a.eltonfs("status", str(mnt)).stdout.splitlines()
    host_a.eltonfs("commit", str(mnt))
    host_a.umount(mnt)
