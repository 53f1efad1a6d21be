"""POSIX operations on a real mount, on upper entries and on lower ones (from a committed tree)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.fs.conftest import Host


@pytest.fixture
def lower(host_a: Host, volume: str):
    """A mount whose base version holds a small tree, mounted afresh so every entry is lower."""
    mnt = host_a.mount(volume)
    (mnt / "dir" / "sub").mkdir(parents=True)
    (mnt / "dir" / "sub" / "deep.txt").write_text("deep")
    (mnt / "file.txt").write_text("lower content\n")
    (mnt / "gone.txt").write_text("to delete")
    host_a.eltonfs("commit", str(mnt))
    host_a.umount(mnt)
    return host_a.mount(f"{volume}@2", name="fresh")


def test_upper_files_dirs_links(host_a: Host, volume: str):
    mnt = host_a.mount(volume)
    p = mnt / "f"
    with open(p, "wb") as f:
        f.write(b"x" * 100_000)
        f.flush()
        os.fsync(f.fileno())
    os.truncate(p, 10)
    assert p.read_bytes() == b"x" * 10
    with open(p, "r+b") as f:
        f.seek(20)
        f.write(b"y")
    assert p.read_bytes() == b"x" * 10 + b"\0" * 10 + b"y"
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(p)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o640, 1234, 5678, 2_000_000_000)
    os.link(p, mnt / "hard")
    assert os.stat(p).st_nlink == 2 and os.stat(mnt / "hard").st_ino == st.st_ino
    with open(mnt / "hard", "ab") as f:
        f.write(b"z")
    assert p.read_bytes().endswith(b"yz")
    os.symlink("f", mnt / "sym")
    assert os.readlink(mnt / "sym") == "f" and (mnt / "sym").read_bytes() == p.read_bytes()
    os.setxattr(p, "user.color", b"blue")
    assert os.getxattr(p, "user.color") == b"blue" and "user.color" in os.listxattr(p)
    os.removexattr(p, "user.color")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.color")
    assert e.value.errno == errno.ENODATA
    (mnt / "d1" / "d2").mkdir(parents=True)
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / "d1")
    assert e.value.errno == errno.ENOTEMPTY
    os.rename(mnt / "d1", mnt / "d3")
    assert os.listdir(mnt / "d3") == ["d2"]
    os.unlink(mnt / "hard")
    assert os.stat(p).st_nlink == 1
    with open(p, "rb") as f:  # an open file outlives its last name
        os.unlink(p)
        assert f.read(3) == b"xxx"
    assert not p.exists()
    sv = os.statvfs(mnt)
    assert sv.f_bsize > 0 and sv.f_blocks > 0 and sv.f_namemax == 255
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / "d3")


def test_lower_entries_copy_up_rename_and_whiteouts(host_a: Host, lower):
    mnt = lower
    assert (mnt / "file.txt").read_text() == "lower content\n"
    with open(mnt / "file.txt", "a") as f:
        f.write("appended\n")
    assert (mnt / "file.txt").read_text() == "lower content\nappended\n"
    os.rename(mnt / "dir", mnt / "moved")  # a lower directory, never listed
    assert (mnt / "moved" / "sub" / "deep.txt").read_text() == "deep"
    os.unlink(mnt / "gone.txt")
    assert not (mnt / "gone.txt").exists()
    os.rename(mnt / "moved" / "sub" / "deep.txt", mnt / "top.txt")
    os.chmod(mnt / "moved", 0o700)
    with open(mnt / "top.txt", "r+") as f:
        f.truncate(2)
    assert (mnt / "top.txt").read_text() == "de"
    status = host_a.eltonfs("status", str(mnt)).stdout.split("\n", 1)[1]
    assert set(status.split("\n")) >= {"M file.txt", "D gone.txt", "D dir", "A moved", "A top.txt"}
    host_a.eltonfs("commit", str(mnt), "-m", "reshaped")
    other = host_a.mount(f"{volume_of(host_a, mnt)}@3", name="check")
    assert sorted(os.listdir(other)) == ["file.txt", "moved", "top.txt"]
    assert stat.S_IMODE(os.stat(other / "moved").st_mode) == 0o700
    assert (other / "top.txt").read_text() == "de"
    assert os.listdir(other / "moved" / "sub") == []


def volume_of(host: Host, mnt) -> str:
    return host.eltonfs("status", str(mnt)).stdout.split()[0]
