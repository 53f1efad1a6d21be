"""Commit, status, log, diff and update across two hosts (two cache dirs on one eltond)."""

from __future__ import annotations

import os

from tests.fs.conftest import Host


def test_commit_status_log_and_noop(host_a: Host, volume: str):
    mnt = host_a.mount(volume)
    (mnt / "a.txt").write_text("hello")
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(os.urandom(3_000_000))
    os.symlink("a.txt", mnt / "link")
    st = host_a.eltonfs("status", str(mnt)).stdout
    assert "A a.txt" in st and "A d" in st and "A link" in st
    assert "committed version 2" in host_a.eltonfs("commit", str(mnt), "-m", "first").stdout
    assert host_a.eltonfs("status", str(mnt)).stdout.strip().splitlines()[1:] == []
    assert "nothing to commit (version 2)" in host_a.eltonfs("commit", str(mnt)).stdout
    log = host_a.eltonfs("log", volume).stdout
    assert "first" in log and log.index("    2") < log.index("    1")
    assert host_a.eltonfs("log", str(mnt)).stdout == log
    assert "A a.txt" in host_a.eltonfs("diff", str(mnt), "1", "2").stdout


def test_two_hosts_share_history(host_a: Host, host_b: Host, volume: str):
    a = host_a.mount(volume)
    payload = os.urandom(5_000_000)
    (a / "big.bin").write_bytes(payload)
    (a / "notes").mkdir()
    (a / "notes" / "one.txt").write_text("from a\n")
    host_a.eltonfs("commit", str(a), "-m", "a writes")

    b = host_b.mount(volume)
    assert not any(host_b.cache.glob("files/*/*"))  # nothing fetched before the first read
    assert (b / "big.bin").read_bytes() == payload
    assert len(list(host_b.cache.glob("files/*/*"))) == 1
    assert (b / "notes" / "one.txt").read_text() == "from a\n"
    (b / "notes" / "one.txt").write_text("edited by b\n")
    (b / "notes" / "two.txt").write_text("new on b\n")
    assert "committed version 3" in host_b.eltonfs("commit", str(b), "-m", "b edits").stdout

    (a / "local.txt").write_text("only on a, not committed\n")
    out = host_a.eltonfs("update", str(a)).stdout
    assert "to 3" in out
    assert (a / "notes" / "one.txt").read_text() == "edited by b\n"
    assert (a / "notes" / "two.txt").read_text() == "new on b\n"
    assert (a / "local.txt").read_text() == "only on a, not committed\n"
    assert [line.split()[0] for line in host_a.eltonfs("log", volume).stdout.splitlines()] == ["3", "2", "1"]
    assert host_b.eltonfs("log", str(b)).stdout == host_a.eltonfs("log", str(a)).stdout


def test_concurrent_commits_rebase_or_refuse(host_a: Host, host_b: Host, volume: str):
    a = host_a.mount(volume)
    (a / "shared.txt").write_text("v1\n")
    (a / "x").mkdir()
    host_a.eltonfs("commit", str(a))
    b = host_b.mount(volume)

    (a / "x" / "from_a").write_text("a\n")
    (b / "from_b").write_text("b\n")
    host_b.eltonfs("commit", str(b), "-m", "b")
    assert "committed version 4" in host_a.eltonfs("commit", str(a), "-m", "a").stdout  # rebased onto 3
    assert (a / "from_b").read_text() == "b\n"
    host_b.eltonfs("update", str(b))
    assert (b / "x" / "from_a").read_text() == "a\n"

    (a / "shared.txt").write_text("a's version\n")
    (b / "shared.txt").write_text("b's version\n")
    host_b.eltonfs("commit", str(b))
    r = host_a.eltonfs("commit", str(a), check=False)
    assert r.returncode == 1 and "conflict: shared.txt" in r.stderr
    assert (a / "shared.txt").read_text() == "a's version\n"  # kept, mount still usable
    (a / "after.txt").write_text("still writable\n")
    assert "M shared.txt" in host_a.eltonfs("status", str(a)).stdout


def test_remount_keeps_local_changes_and_mount_at_version(host_a: Host, volume: str):
    mnt = host_a.mount(volume)
    (mnt / "f").write_text("one")
    host_a.eltonfs("commit", str(mnt))
    (mnt / "f").write_text("two (local)")
    host_a.umount(mnt)
    mnt = host_a.mount(volume)
    assert (mnt / "f").read_text() == "two (local)"
    old = host_a.mount(f"{volume}@1", name="old")
    assert os.listdir(old) == []
    r = host_a.eltonfs("status", str(host_a.root / "nowhere"), check=False)
    assert r.returncode == 1 and "not an eltonfs mount" in r.stderr
