"""Three-way merge of trees: rebase local changes onto a version another host committed.

Two sides conflict when they changed the same path differently, or when one replaced or removed a
directory inside which the other changed something. A change of a directory's mode, owner or
xattrs alone does not conflict with changes inside it. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fs.overlay import apply
from fs.tree import DIR, Change, Loader, diff


@dataclass
class Merge:
    root: str  # the merged tree ("" when there are conflicts)
    objects: dict[str, bytes] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    ours: list[Change] = field(default_factory=list)  # our changes replayed onto theirs


def _replaces(change: Change) -> bool:
    """True unless the change only touches a directory's metadata (its content is merged below)."""
    _, old, new = change
    return not (old is not None and new is not None and old.kind == DIR and new.kind == DIR)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def merge3(base: str, ours: str, theirs: str, load: Loader) -> Merge:
    """Replay the changes from ``base`` to ``ours`` onto ``theirs``, or list the conflicting paths."""
    if ours == base or ours == theirs:
        return Merge(theirs)
    if theirs == base:
        return Merge(ours, ours=list(diff(base, ours, load)))
    mine = list(diff(base, ours, load))
    others = {path: (old, new, _replaces((path, old, new))) for path, old, new in diff(base, theirs, load)}
    replaced_by_me = {p for p, o, n in mine if _replaces((p, o, n))}
    replaced_by_them = {p for p, (_, _, r) in others.items() if r}
    conflicts: set[str] = set()
    todo: list[Change] = []
    for path, old, new in mine:
        if path in others:
            their_new = others[path][1]
            if new is None and their_new is None:
                continue
            if new is not None and new.same_content(their_new):
                continue
            conflicts.add(path)
            continue
        if any(a in replaced_by_them for a in _ancestors(path)):
            conflicts.add(path)
            continue
        todo.append((path, old, new))
    for path in others:
        if any(a in replaced_by_me for a in _ancestors(path)):
            conflicts.add(path)
    if conflicts:
        return Merge("", conflicts=sorted(conflicts))
    if not todo:
        return Merge(theirs)
    applied = apply(theirs, todo, load)
    return Merge(applied.root, applied.objects, ours=todo)
