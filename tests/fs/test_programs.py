"""Real programs in a mounted volume, and the tree they leave committed and read back elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.fs.conftest import Host


def sh(*args: str, cwd: Path | None = None, **kw) -> str:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        d = root / f"pkg{i % 37}" / f"mod{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.py").write_text(f"# file {i}\n" + "x = 1\n" * (i % 50))
    os.symlink("pkg0", root / "link")
    os.chmod(root / "pkg1", 0o750)


def test_git_sqlite_editor_find_du(host_a: Host, volume: str, tmp_path: Path):
    mnt = host_a.mount(volume)
    repo = mnt / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    sh("git", "init", "-q", cwd=repo, env=env)
    (repo / "a.txt").write_text("one\n")
    sh("git", "add", "a.txt", cwd=repo, env=env)
    sh("git", "commit", "-q", "-m", "first", cwd=repo, env=env)
    (repo / "a.txt").write_text("two\n")
    sh("git", "commit", "-q", "-am", "second", cwd=repo, env=env)
    assert sh("git", "log", "--format=%s", cwd=repo, env=env).split() == ["second", "first"]
    assert sh("git", "status", "--porcelain", cwd=repo, env=env) == ""
    sh("git", "fsck", "--no-progress", cwd=repo, env=env)

    db = mnt / "data.db"
    sh("sqlite3", str(db), "CREATE TABLE t(x INTEGER); INSERT INTO t SELECT value FROM generate_series(1, 5000);")
    sh("sqlite3", str(db), "UPDATE t SET x = x * 2 WHERE x % 2 = 0;")
    assert sh("sqlite3", str(db), "SELECT count(*), sum(x) FROM t;").strip() == "5000|18755000"

    # an editor's atomic save: write a temp file, fsync, rename over the original
    doc = mnt / "doc.txt"
    doc.write_text("draft\n")
    tmp = mnt / ".doc.txt.swp"
    with open(tmp, "w") as f:
        f.write("final\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, doc)
    assert doc.read_text() == "final\n"
    sh("vim", "-Es", "-c", "%s/final/vim-saved/", "-c", "wq", str(doc))
    assert doc.read_text() == "vim-saved\n"

    found = sh("find", str(mnt), "-name", "*.txt").split()
    assert str(doc) in found and str(repo / "a.txt") in found
    assert int(sh("du", "-sk", str(mnt)).split()[0]) > 0

    host_a.eltonfs("commit", str(mnt), "-m", "programs")
    other = host_a.mount(volume, name="other")
    assert sh("git", "log", "--format=%s", cwd=other / "repo", env=env).split() == ["second", "first"]
    assert sh("sqlite3", str(other / "data.db"), "SELECT sum(x) FROM t;").strip() == "18755000"


def test_cp_rsync_tar(host_a: Host, volume: str, tmp_path: Path):
    src = tmp_path / "src"
    make_tree(src, 1500)
    mnt = host_a.mount(volume)
    sh("cp", "-a", str(src), str(mnt / "cp"))
    sh("rsync", "-a", f"{src}/", str(mnt / "rsync"))
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        t.add(src, arcname="tar")
    sh("tar", "-xf", str(tmp_path / "t.tar"), "-C", str(mnt))
    for name in ("cp", "rsync", "tar"):
        sh("diff", "-r", "--no-dereference", str(src), str(mnt / name))
    # rsync -a a second time finds nothing to do (sizes and mtimes were kept)
    assert sh("rsync", "-ai", f"{src}/", str(mnt / "rsync")).strip() == ""
    host_a.eltonfs("commit", str(mnt), "-m", "copies")
    other = host_a.mount(volume, name="other")
    sh("diff", "-r", "--no-dereference", str(src), str(other / "tar"))
    assert oct(os.stat(other / "cp" / "pkg1").st_mode & 0o777) == "0o750"


@pytest.mark.slow
def test_tar_thousands_and_venv(host_a: Host, volume: str, tmp_path: Path):
    src = tmp_path / "src"
    make_tree(src, 6000)
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as t:
        t.add(src, arcname="tree")
    mnt = host_a.mount(volume)
    sh("tar", "-xzf", str(tmp_path / "t.tar.gz"), "-C", str(mnt))
    sh("diff", "-r", "--no-dereference", str(src), str(mnt / "tree"))
    sh(sys.executable, "-m", "venv", "--without-pip", str(mnt / "venv"))
    assert sh(str(mnt / "venv" / "bin" / "python"), "-c", "import sys; print(sys.prefix)").strip() == str(mnt / "venv")
    host_a.eltonfs("commit", str(mnt), "-m", "tree")
    other = host_a.mount(volume, name="other")
    sh("diff", "-r", "--no-dereference", str(src), str(other / "tree"))
