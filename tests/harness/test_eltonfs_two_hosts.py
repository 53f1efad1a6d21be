"""Issue 6, two hosts in two clusters: A writes and commits (a hard link too), B reads lazily and sees the link as one
inode, B edits and commits, A updates. Issue 4 point 3: A's commit is acknowledged only once its whole new tree is
on the other store host of A's cluster, which still serves it after A's daemon is killed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.netns import Harness
from tests.harness.test_mesh import converged

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and FUSE need root")]


def eltonfs(h: Harness, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run eltonfs in the host's network namespace but the machine's mount namespace (so the mount
    it makes is visible to this test; `ip netns exec` would give it a private one)."""
    netns = f"/var/run/netns/{h.netns_of(host)}"
    r = subprocess.run(["nsenter", f"--net={netns}", str(h.venv / "bin" / "eltonfs"), *args],
                       capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"{host}: eltonfs {' '.join(args)}: {r.stderr}"
    return r


# Run with the venv's python inside a host: the chunks (hash, size) of a volume version's tree, as JSON
TREE_CHUNKS = """
import json, sys
from fs.tree import EMPTY_DIR, EMPTY_DIR_BYTES, FILE, decode_dir, walk
from mesh.client import Client
c = Client("http://127.0.0.1:7420")
out = set()
def load(h):
    data = EMPTY_DIR_BYTES if h == EMPTY_DIR else c.get_chunk(h)
    out.add((h, len(data)))
    return decode_dir(data)
for _, e in walk(c.manifest(sys.argv[1], int(sys.argv[2]))["meta"]["root"], load):
    if e.kind == FILE:
        out.update(e.chunks)
print(json.dumps(sorted(out)))
"""
# Which of these chunks the host lacks; with "read", each is then read from it (verified by its hash)
HELD = """
import json, sys
from mesh.client import Client
c = Client("http://127.0.0.1:7420")
chunks = json.loads(sys.argv[1])
missing = c.missing_chunks([h for h, _ in chunks])
if not missing and sys.argv[2:] == ["read"]:
    for h, n in chunks:
        assert len(c.get_chunk(h, n)) == n
print(json.dumps(missing))
"""


def py(h: Harness, host: str, script: str, *args: str):  # type: ignore[no-untyped-def]
    r = h.exec(host, [str(h.venv / "bin" / "python"), "-c", script, *args], timeout=120)
    assert r.returncode == 0, f"{host}: {r.stderr}"
    return json.loads(r.stdout)


def wan_in(h: Harness, cluster: int) -> int:
    return int(h.wan_bytes()[f"c{cluster}"]["rx_bytes"])


def test_two_hosts_share_a_volume_through_commits(tmp_path: Path) -> None:
    # three hosts a cluster: a master and two store hosts (A = c1h2 and its copy host c1h3; B = c2h2)
    with Harness(tmp_path / "mesh", clusters=2, hosts=3, health_timeout=60) as h:
        converged(h)
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir()
        b.mkdir()
        mounted: list[tuple[str, Path]] = []
        try:
            eltonfs(h, "c1h2", "init", "team/vol")
            eltonfs(h, "c1h2", "mount", "team/vol", str(a), "--cache-dir", str(tmp_path / "cache-a"))
            mounted.append(("c1h2", a))
            big = os.urandom(8 * 1024 * 1024)
            (a / "data").mkdir()
            (a / "data" / "big.bin").write_bytes(big)
            (a / "notes.txt").write_text("from A\n")
            os.link(a / "notes.txt", a / "data" / "notes-link.txt")  # a hard link: one inode on B too
            eltonfs(h, "c1h2", "commit", str(a), "-m", "first from A")
            first = py(h, "c1h2", TREE_CHUNKS, "team/vol", "2")
            assert len(first) >= 5 and py(h, "c1h3", HELD, json.dumps(first)) == [], \
                "A's acknowledged commit is already on the other store host of its cluster"

            before = wan_in(h, 2)
            eltonfs(h, "c2h2", "mount", "team/vol", str(b), "--cache-dir", str(tmp_path / "cache-b"))
            mounted.append(("c2h2", b))
            assert sorted(p.name for p in b.iterdir()) == ["data", "notes.txt"]
            n1, n2 = os.stat(b / "notes.txt"), os.stat(b / "data" / "notes-link.txt")
            assert n1.st_ino == n2.st_ino and n1.st_nlink == n2.st_nlink == 2, "A's hard link is one inode on B"
            listed = wan_in(h, 2) - before
            assert listed < 1024 * 1024, f"listing the tree moved {listed} bytes: contents are fetched on first read only"
            assert (b / "data" / "big.bin").read_bytes() == big
            assert wan_in(h, 2) - before >= len(big), "the first read fetched the file across the WAN"
            again = wan_in(h, 2)
            assert (b / "data" / "big.bin").read_bytes() == big
            assert wan_in(h, 2) - again < 256 * 1024, "a second read is served from B's cache"

            (b / "notes.txt").write_text("from A\nand from B\n")
            assert (b / "data" / "notes-link.txt").read_text() == "from A\nand from B\n"
            (b / "data" / "b-only.txt").write_text("B was here\n")
            eltonfs(h, "c2h2", "commit", str(b), "-m", "edit from B")

            (a / "local-draft.txt").write_text("not committed yet\n")
            eltonfs(h, "c1h2", "update", str(a))
            assert (a / "notes.txt").read_text() == "from A\nand from B\n"
            assert (a / "data" / "notes-link.txt").read_text() == "from A\nand from B\n"
            assert os.stat(a / "notes.txt").st_ino == os.stat(a / "data" / "notes-link.txt").st_ino
            assert (a / "data" / "b-only.txt").read_text() == "B was here\n"
            assert (a / "local-draft.txt").read_text() == "not committed yet\n", "update keeps local changes"

            log_a = eltonfs(h, "c1h2", "log", str(a)).stdout
            log_b = eltonfs(h, "c2h2", "log", str(b)).stdout
            assert "edit from B" in log_a and "first from A" in log_a
            assert [line.split()[0] for line in log_a.splitlines() if line.strip()][:2] == \
                   [line.split()[0] for line in log_b.splitlines() if line.strip()][:2]

            eltonfs(h, "c1h2", "umount", str(a))
            mounted.remove(("c1h2", a))
            h.kill_daemon("c1h2")  # A's host is lost: its cluster still serves A's commit from c1h3
            assert py(h, "c1h3", HELD, json.dumps(first), "read") == []
        finally:
            for host, mnt in reversed(mounted):
                if eltonfs(h, host, "umount", str(mnt), check=False).returncode != 0:
                    subprocess.run(["umount", "-l", str(mnt)], check=False)
