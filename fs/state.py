"""A mount's namespace: inodes and directory entries in SQLite, upper file contents on local disk.

The lower layer (the base tree) enters the namespace lazily: a directory inode keeps the hash of
its lower directory object until it is first listed or looked into, and only then are its entries
copied in as inodes. A lower file keeps its chunk list until it is opened for writing, when its
content is copied up into ``upper/<ino>``. Deleting or renaming a lower entry is a change of the
namespace like any other, so whiteouts are implicit: a name absent from a loaded directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fs.store import Store
from fs.tree import DIR, FILE, SYMLINK, Change, Chunks, Entry, dir_entry, dir_object, file_entry
from mesh.core.codec import pack, unpack

ROOT = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v);
CREATE TABLE IF NOT EXISTS inodes(
  ino INTEGER PRIMARY KEY AUTOINCREMENT, mode INT NOT NULL, uid INT, gid INT,
  atime_ns INT, mtime_ns INT, ctime_ns INT, nlink INT NOT NULL, rdev INT DEFAULT 0,
  size INT DEFAULT 0, target BLOB, chunks BLOB, upper INT DEFAULT 0, lower_ref TEXT,
  hashed BLOB, hashed_stamp TEXT);
CREATE TABLE IF NOT EXISTS dentries(parent INT NOT NULL, name BLOB NOT NULL, ino INT NOT NULL,
  PRIMARY KEY(parent, name));
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(ino);
CREATE TABLE IF NOT EXISTS links(key TEXT PRIMARY KEY, ino INT NOT NULL);
CREATE TABLE IF NOT EXISTS xattrs(ino INT NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
  PRIMARY KEY(ino, name));
"""
COLUMNS = ("ino", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns", "nlink", "rdev", "size",
           "target", "chunks", "upper", "lower_ref", "hashed", "hashed_stamp")


class NamespaceError(Exception):
    """An operation the namespace refuses; ``errno`` says why (the FUSE layer returns it)."""

    def __init__(self, errno: int) -> None:
        super().__init__(os.strerror(errno))
        self.errno = errno


@dataclass
class Inode:
    ino: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    size: int
    target: bytes | None
    chunks: bytes | None
    upper: int
    lower_ref: str | None
    hashed: bytes | None
    hashed_stamp: str | None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def lower_chunks(self) -> Chunks:
        return tuple((h, s) for h, s in unpack(self.chunks, 1 << 30)) if self.chunks else ()


def _pack_chunks(chunks: Chunks) -> bytes:
    return pack([[h, s] for h, s in chunks])


class State:
    """One mount's state directory: ``state.db`` and ``upper/``."""

    def __init__(self, state_dir: Path, store: Store) -> None:
        self.dir = Path(state_dir)
        self.upper_dir = self.dir / "upper"
        self.upper_dir.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.db = sqlite3.connect(self.dir / "state.db", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def tx(self) -> Iterator[None]:
        """One transaction; nested uses join the outer one."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------------------
    def get_meta(self, k: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else default

    def set_meta(self, k: str, v: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES(?, ?)", (k, v))

    def initialise(self, volume: str, version: int, root: str, now_ns: int) -> None:
        """Create the root inode over the base tree ``root`` (once per state directory)."""
        if self.get(ROOT) is not None:
            return
        with self.tx():
            self.db.execute(
                "INSERT INTO inodes(ino, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink, lower_ref)"
                " VALUES(?, ?, 0, 0, ?, ?, ?, 1, ?)", (ROOT, stat.S_IFDIR | 0o755, now_ns, now_ns, now_ns, root))
            self.set_meta("volume", volume)
            self.set_meta("base_version", version)
            self.set_meta("base_root", root)

    def cleanup_orphans(self) -> None:
        """Drop inodes that lost their last name while open (the previous mount ended)."""
        for (ino,) in self.db.execute("SELECT ino FROM inodes WHERE nlink <= 0").fetchall():
            self.purge(ino)

    # -- inodes -----------------------------------------------------------------------------------
    def get(self, ino: int) -> Inode | None:
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM inodes WHERE ino=?", (ino,)).fetchone()
        return Inode(*row) if row else None

    def need(self, ino: int) -> Inode:
        node = self.get(ino)
        if node is None:
            raise NamespaceError(2)
        return node

    def update(self, ino: int, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE inodes SET {sets} WHERE ino=?", (*fields.values(), ino))

    def new_inode(self, mode: int, uid: int, gid: int, now_ns: int, **fields: Any) -> int:
        cols = {"mode": mode, "uid": uid, "gid": gid, "atime_ns": now_ns, "mtime_ns": now_ns,
                "ctime_ns": now_ns, "nlink": 1, **fields}
        cur = self.db.execute(f"INSERT INTO inodes({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})",
                              tuple(cols.values()))
        return int(cur.lastrowid)

    def upper_path(self, ino: int) -> Path:
        return self.upper_dir / str(ino)

    def purge(self, ino: int) -> None:
        """Forget an inode with no name left and no user (its upper file goes too)."""
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM links WHERE ino=?", (ino,))
        self.upper_path(ino).unlink(missing_ok=True)

    # -- directories ------------------------------------------------------------------------------
    def materialize(self, node: Inode) -> None:
        """Copy the entries of a lower directory into the namespace (once)."""
        if node.lower_ref is None:
            return
        entries = self.store.load_dir(node.lower_ref)
        with self.tx():
            for name, e in entries.items():
                self._insert_entry(node.ino, os.fsencode(name), e)
            self.update(node.ino, lower_ref=None)
        node.lower_ref = None
        # the other names of a hard-link group come in now too, so all of them are one inode here and a
        # commit rebuilds every directory that holds one
        for e in entries.values():
            for path in e.links:
                parent_path, _, name = path.rpartition("/")
                parent = self.resolve(parent_path)
                if parent is not None and self.need(parent).is_dir:
                    self.lookup(parent, os.fsencode(name))

    def _insert_entry(self, parent: int, name: bytes, e: Entry) -> int:
        kind_bits = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}[e.kind]
        fields: dict[str, Any] = {"atime_ns": e.mtime_ns, "mtime_ns": e.mtime_ns, "ctime_ns": e.mtime_ns}
        key = None
        if e.kind == FILE and len(e.links) > 1:
            # every name of a hard-link group has the same entry: the first one met makes the inode
            # (with the group's link count), the others are names of it
            key = dir_object({"": e})[0]
            row = self.db.execute("SELECT ino FROM links WHERE key=?", (key,)).fetchone()
            known = self.get(row[0]) if row else None
            if known is not None and known.nlink > 0:
                self.db.execute("INSERT INTO dentries(parent, name, ino) VALUES(?, ?, ?)", (parent, name, known.ino))
                return known.ino
            fields["nlink"] = len(e.links)
        if e.kind == FILE:
            fields.update(size=e.size, chunks=_pack_chunks(e.chunks))
        elif e.kind == DIR:
            fields.update(lower_ref=e.ref)
        else:
            target = os.fsencode(e.target)
            fields.update(target=target, size=len(target))
        ino = self.new_inode(kind_bits | (e.mode & 0o7777), e.uid, e.gid, 0, **fields)
        self.db.execute("INSERT INTO dentries(parent, name, ino) VALUES(?, ?, ?)", (parent, name, ino))
        if key is not None:
            self.db.execute("INSERT OR REPLACE INTO links(key, ino) VALUES(?, ?)", (key, ino))
        for k, v in e.xattrs:
            self.db.execute("INSERT INTO xattrs(ino, name, value) VALUES(?, ?, ?)", (ino, os.fsencode(k), v))
        return ino

    def lookup(self, parent: int, name: bytes) -> int | None:
        self.materialize(self.need(parent))
        row = self.db.execute("SELECT ino FROM dentries WHERE parent=? AND name=?", (parent, name)).fetchone()
        return row[0] if row else None

    def children(self, parent: int) -> list[tuple[bytes, int]]:
        self.materialize(self.need(parent))
        return self.db.execute("SELECT name, ino FROM dentries WHERE parent=? ORDER BY name",
                               (parent,)).fetchall()

    def is_empty(self, ino: int) -> bool:
        node = self.need(ino)
        if node.lower_ref is not None:
            return not self.store.load_dir(node.lower_ref)
        return self.db.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (ino,)).fetchone() is None

    def link(self, parent: int, name: bytes, ino: int) -> None:
        self.db.execute("INSERT INTO dentries(parent, name, ino) VALUES(?, ?, ?)", (parent, name, ino))

    def unlink(self, parent: int, name: bytes) -> int:
        """Remove a name; return its inode (the caller purges it once unused)."""
        ino = self.lookup(parent, name)
        if ino is None:
            raise NamespaceError(2)
        self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))
        self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino=?", (ino,))
        return ino

    def drop_tree(self, ino: int, unused: Callable[[int], bool]) -> None:
        """After an inode lost a name: release it, and everything below a directory (used by update)."""
        node = self.get(ino)
        if node is None:
            return
        if node.is_dir and node.lower_ref is None:
            for name, child in self.db.execute("SELECT name, ino FROM dentries WHERE parent=?", (ino,)).fetchall():
                self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (ino, name))
                self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino=?", (child,))
                self.drop_tree(child, unused)
        if node.nlink <= 0 and unused(ino):
            self.purge(ino)

    def path_of(self, ino: int) -> str:
        parts: list[str] = []
        while ino != ROOT:
            row = self.db.execute("SELECT parent, name FROM dentries WHERE ino=? LIMIT 1", (ino,)).fetchone()
            if row is None:
                return ""
            ino = row[0]
            parts.append(os.fsdecode(row[1]))
        return "/".join(reversed(parts))

    def resolve(self, path: str) -> int | None:
        ino: int | None = ROOT
        for part in path.split("/") if path else []:
            ino = self.lookup(ino, os.fsencode(part))
            if ino is None:
                return None
        return ino

    # -- upper files ------------------------------------------------------------------------------
    def copy_up(self, node: Inode, truncate: bool = False) -> Path:
        """Give a lower file an upper copy (its whole content unless ``truncate``)."""
        path = self.upper_path(node.ino)
        if node.upper:
            return path
        if truncate or not node.chunks:
            path.write_bytes(b"")
        else:
            src = self.store.file_path(node.lower_chunks())
            tmp = path.with_name(path.name + ".copy")
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        os.utime(path, ns=(node.atime_ns, node.mtime_ns))
        self.update(node.ino, upper=1, chunks=None)
        node.upper, node.chunks = 1, None
        return path

    # -- snapshot ---------------------------------------------------------------------------------
    def entry_of(self, node: Inode, ref: str = "", chunks: Chunks = ()) -> Entry:
        xattrs = tuple((os.fsdecode(k), bytes(v)) for k, v in self.db.execute(
            "SELECT name, value FROM xattrs WHERE ino=? ORDER BY name", (node.ino,)).fetchall())
        kw = {"mode": node.mode & 0o7777, "uid": node.uid, "gid": node.gid, "xattrs": xattrs}
        if node.is_dir:
            return dir_entry(ref, mtime_ns=node.mtime_ns, **kw)
        if stat.S_ISLNK(node.mode):
            return Entry(SYMLINK, target=os.fsdecode(node.target or b""), mtime_ns=node.mtime_ns, **kw)
        mtime = node.mtime_ns
        if node.upper:
            mtime = os.stat(self.upper_path(node.ino)).st_mtime_ns
        return file_entry(chunks, mtime_ns=mtime, **kw)

    def file_chunks(self, node: Inode, upload: bool) -> Chunks:
        """A regular file's chunk list: lower as recorded; upper cut (and cached by its stamp)."""
        if not node.upper:
            return node.lower_chunks()
        path = self.upper_path(node.ino)
        st = os.stat(path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        if not upload and node.hashed is not None and node.hashed_stamp == stamp:
            return tuple((h, s) for h, s in unpack(node.hashed, 1 << 30))
        chunks = self.store.cut_file(path, upload)
        self.update(node.ino, hashed=_pack_chunks(chunks), hashed_stamp=stamp)
        return chunks

    def snapshot(self, upload: bool) -> tuple[str, dict[str, bytes], list[str]]:
        """The working tree: (root hash, directory objects, paths of entries a tree cannot hold)."""
        objects: dict[str, bytes] = {}
        skipped: list[str] = []
        linked: dict[int, tuple[Chunks, tuple[str, ...]]] = {}  # a hard-linked inode's content, once

        def file_of(node: Inode) -> Entry:
            if node.nlink < 2:
                return self.entry_of(node, chunks=self.file_chunks(node, upload))
            if node.ino not in linked:
                names = self.db.execute("SELECT parent, name FROM dentries WHERE ino=?", (node.ino,)).fetchall()
                paths = sorted(f"{p}/{os.fsdecode(n)}" if (p := self.path_of(parent)) else os.fsdecode(n)
                               for parent, n in names)
                linked[node.ino] = (self.file_chunks(node, upload), tuple(paths) if len(paths) > 1 else ())
            chunks, links = linked[node.ino]
            return replace(self.entry_of(node, chunks=chunks), links=links)

        def build(node: Inode, prefix: str) -> str:
            if node.lower_ref is not None:
                return node.lower_ref
            entries: dict[str, Entry] = {}
            for name, ino in self.db.execute("SELECT name, ino FROM dentries WHERE parent=?",
                                             (node.ino,)).fetchall():
                child = self.need(ino)
                sname = os.fsdecode(name)
                path = f"{prefix}/{sname}" if prefix else sname
                if child.is_dir:
                    entries[sname] = self.entry_of(child, ref=build(child, path))
                elif stat.S_ISREG(child.mode):
                    entries[sname] = file_of(child)
                elif stat.S_ISLNK(child.mode):
                    entries[sname] = self.entry_of(child)
                else:
                    skipped.append(path)
            h, data = dir_object(entries)
            objects[h] = data
            return h

        root = build(self.need(ROOT), "")
        return root, objects, skipped

    # -- moving the base --------------------------------------------------------------------------
    def apply_changes(self, changes: list[Change], unused: Callable[[int], bool],
                      invalidate: Callable[[int, bytes], None]) -> None:
        """Make the namespace match a tree that differs from it by ``changes`` (update, rebase)."""
        for path, old, new in changes:
            parent_path, _, name = path.rpartition("/")
            parent = self.resolve(parent_path)
            if parent is None:
                continue
            bname = os.fsencode(name)
            current = self.lookup(parent, bname)
            if new is not None and old is not None and old.kind == DIR and new.kind == DIR and current:
                self.update(current, mode=stat.S_IFDIR | new.mode, uid=new.uid, gid=new.gid)
                self.db.execute("DELETE FROM xattrs WHERE ino=?", (current,))
                for k, v in new.xattrs:
                    self.db.execute("INSERT INTO xattrs VALUES(?, ?, ?)", (current, os.fsencode(k), v))
                invalidate(parent, bname)
                continue
            if current is not None:
                self.unlink(parent, bname)
                self.drop_tree(current, unused)
            if new is not None:
                self._insert_entry(parent, bname, new)
            invalidate(parent, bname)

    def entries_iter(self) -> Iterator[tuple[int, Inode]]:  # pragma: no cover - debugging aid
        for (ino,) in self.db.execute("SELECT ino FROM inodes").fetchall():
            yield ino, self.need(ino)
