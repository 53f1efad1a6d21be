"""Apply a set of changes to a tree, producing only the directory objects on the changed paths.

Used to rebase local changes onto another host's commit and to move a mount's base. Pure: the
caller loads directory objects and stores the ones returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from fs.tree import DIR, Change, Dir, Entry, Loader, decode_dir, dir_object


class PathMissing(ValueError):
    """A change names a path whose parent directory does not exist in the target tree."""


@dataclass
class Applied:
    root: str
    objects: dict[str, bytes] = field(default_factory=dict)  # new directory objects by hash

    def loader(self, load: Loader) -> Loader:
        """A loader that also knows the objects built here (not yet stored)."""

        def _load(h: str) -> Dir:
            data = self.objects.get(h)
            return decode_dir(data) if data is not None else load(h)

        return _load


@dataclass
class _Node:
    leaf: tuple[Entry | None, Entry | None] | None = None  # (old, new) set at this name
    children: dict[str, _Node] = field(default_factory=dict)


def apply(root: str, changes: Iterable[Change], load: Loader) -> Applied:
    """Set every changed path of ``root`` to its new entry (None removes it).

    A change from a directory to a directory changes only its metadata and keeps the target's
    content, so it composes with changes inside it.
    """
    top = _Node()
    for path, old, new in changes:
        node = top
        for part in path.split("/"):
            node = node.children.setdefault(part, _Node())
        node.leaf = (old, new)
    out = Applied(root)
    out.root = _rebuild(root, top, load, out, "")
    return out


def _rebuild(ref: str, node: _Node, load: Loader, out: Applied, prefix: str) -> str:
    entries = dict(out.loader(load)(ref))
    for name, child in node.children.items():
        path = f"{prefix}/{name}" if prefix else name
        current = entries.get(name)
        if child.leaf is not None:
            old, new = child.leaf
            if new is None:
                entries.pop(name, None)
                current = None
            elif old is not None and old.kind == DIR and new.kind == DIR and current is not None \
                    and current.kind == DIR:
                current = replace(new, ref=current.ref)
                entries[name] = current
            else:
                current = new
                entries[name] = new
        if child.children:
            if current is None or current.kind != DIR:
                raise PathMissing(path)
            current = replace(current, ref=_rebuild(current.ref, child, load, out, path))
            entries[name] = current
    h, data = dir_object(entries)
    out.objects[h] = data
    return h
