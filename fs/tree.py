"""Tree documents: a volume version is a tree of content-addressed directory objects.

A directory object lists its entries (name, kind, mode, owner, mtime, size, and the content: a
chunk list for a file, the hash of the child's directory object for a directory, the target for a
symlink). It is stored as a chunk named by its hash, so an unchanged subtree keeps its hash and a
commit uploads only the directories on the paths it changed. Pure: loading a directory object is a
function the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from mesh.core.codec import pack, unpack
from mesh.core.manifest import chunk_hash
from mesh.errors import ProtocolError

FILE, DIR, SYMLINK = "file", "dir", "symlink"
KINDS = (FILE, DIR, SYMLINK)
FORMAT = 1
MAX_DIR_OBJECT = 64 * 1024 * 1024

Chunks = tuple[tuple[str, int], ...]
Dir = Mapping[str, "Entry"]
Loader = Callable[[str], Dir]
"""Return the entries of the directory object with this hash (the caller does the I/O)."""


@dataclass(frozen=True)
class Entry:
    """One name in a directory. ``ref`` names a directory's object; ``chunks`` a file's content."""

    kind: str
    mode: int = 0o644  # permission bits (07777)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    chunks: Chunks = ()
    ref: str = ""
    target: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    # a hard-link group: the sorted paths (from the volume's root) of every name of this inode, the
    # same in each member's entry; empty for a file with one name
    links: tuple[str, ...] = ()

    def same_content(self, other: Entry | None) -> bool:
        """True when the two entries mean the same thing to a user (a directory's mtime aside)."""
        if other is None or self.kind != other.kind:
            return False
        if self.kind == DIR:
            return self.ref == other.ref and self.meta() == other.meta()
        return self == other

    def meta(self) -> tuple[int, int, int, tuple[tuple[str, bytes], ...]]:
        return (self.mode, self.uid, self.gid, self.xattrs)


def file_entry(chunks: Chunks, **kw: Any) -> Entry:
    return Entry(FILE, chunks=tuple(chunks), size=sum(s for _, s in chunks), **kw)


def dir_entry(ref: str, **kw: Any) -> Entry:
    kw.setdefault("mode", 0o755)
    return Entry(DIR, ref=ref, **kw)


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _name_str(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", "surrogateescape")


def encode_dir(entries: Dir) -> bytes:
    """The canonical bytes of a directory object (entries sorted by name, so equal dirs hash equal)."""
    rows = []
    for name in sorted(entries, key=_name_bytes):
        e = entries[name]
        rows.append([_name_bytes(name), e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.size,
                     [[h, s] for h, s in e.chunks], e.ref, _name_bytes(e.target),
                     [[_name_bytes(k), v] for k, v in e.xattrs]])
        if e.links:  # only then: entries without links encode (and hash) as before they existed
            rows[-1].append([_name_bytes(p) for p in e.links])
    return pack([FORMAT, rows])


def decode_dir(data: bytes) -> dict[str, Entry]:
    """Parse a directory object; a malformed one raises ProtocolError."""
    obj = unpack(data, MAX_DIR_OBJECT)
    try:
        fmt, rows = obj
        if fmt != FORMAT:
            raise ProtocolError("malformed_tree", f"directory format {fmt!r}")
        out: dict[str, Entry] = {}
        for row in rows:
            if len(row) not in (11, 12):
                raise ProtocolError("malformed_tree", f"entry with {len(row)} fields")
            name, kind, mode, uid, gid, mtime_ns, size, chunks, ref, target, xattrs = row[:11]
            links = tuple(_name_str(p) for p in row[11]) if len(row) == 12 else ()
            if kind not in KINDS:
                raise ProtocolError("malformed_tree", f"entry kind {kind!r}")
            out[_name_str(name)] = Entry(
                kind=kind, mode=int(mode), uid=int(uid), gid=int(gid), mtime_ns=int(mtime_ns),
                size=int(size), chunks=tuple((str(h), int(s)) for h, s in chunks), ref=str(ref),
                target=_name_str(target), xattrs=tuple((_name_str(k), bytes(v)) for k, v in xattrs),
                links=links)
    except (TypeError, ValueError) as exc:
        raise ProtocolError("malformed_tree", str(exc)) from exc
    return out


def dir_object(entries: Dir) -> tuple[str, bytes]:
    """(hash, bytes) of a directory object."""
    data = encode_dir(entries)
    return chunk_hash(data), data


EMPTY_DIR, EMPTY_DIR_BYTES = dir_object({})


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def walk(root: str, load: Loader, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Every (path, entry) under the directory object ``root``, parents before children."""
    for name, e in sorted(load(root).items()):
        path = join(prefix, name)
        yield path, e
        if e.kind == DIR:
            yield from walk(e.ref, load, path)


Change = tuple[str, "Entry | None", "Entry | None"]
"""(path, old entry or None if added, new entry or None if removed)."""


def diff(a: str, b: str, load: Loader, prefix: str = "") -> Iterator[Change]:
    """What changed from tree ``a`` to tree ``b``, skipping subtrees whose hashes are equal.

    A directory present on both sides is descended into (and reported itself only if its mode,
    owner or xattrs changed); a directory added, removed or replaced is one change.
    """
    if a == b:
        return
    da, db = load(a), load(b)
    for name in sorted(set(da) | set(db)):
        ea, eb = da.get(name), db.get(name)
        path = join(prefix, name)
        if ea is not None and eb is not None and ea.kind == DIR and eb.kind == DIR:
            if ea.meta() != eb.meta():
                yield path, ea, eb
            yield from diff(ea.ref, eb.ref, load, path)
        elif ea is None or eb is None or ea != eb:
            if ea is not None and eb is not None and ea.same_content(eb):
                continue
            yield path, ea, eb


def with_ref(e: Entry, ref: str) -> Entry:
    return replace(e, ref=ref)
