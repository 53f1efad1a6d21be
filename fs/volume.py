"""Status, commit, update and diff of a mounted volume: the namespace against the base version.

A commit is atomic: the working tree is snapshotted in one step of the FUSE thread, its new
chunks and directory objects are uploaded, and the volume's home issues the next version only if
the base is still the latest. If another host committed meanwhile, the local changes are rebased
onto its version by a three-way merge (the namespace moves with them) and the commit is retried;
overlapping changes are refused with the conflicting paths and nothing local is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fs.merge import merge3
from fs.state import State
from fs.store import Store
from fs.tree import Change, Dir, Loader, decode_dir, diff
from mesh.client import Client
from mesh.errors import Conflict

MAX_REBASES = 5


class MergeConflict(Conflict):
    """Local changes overlap changes committed elsewhere; nothing was committed, the mount is unchanged."""

    code = "merge_conflict"

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        shown = ", ".join(paths[:20]) + (f" and {len(paths) - 20} more" if len(paths) > 20 else "")
        super().__init__(shown)


def tree_root(manifest: dict[str, Any]) -> str:
    return str((manifest.get("meta") or {})["root"])


def change_code(change: Change) -> str:
    _, old, new = change
    return "A" if old is None else "D" if new is None else "M"


class Volume:
    def __init__(self, state: State, store: Store, client: Client,
                 unused: Callable[[int], bool] = lambda ino: True,
                 invalidate: Callable[[int, bytes], None] = lambda parent, name: None) -> None:
        self.state, self.store, self.client = state, store, client
        self.unused, self.invalidate = unused, invalidate

    @property
    def name(self) -> str:
        return str(self.state.get_meta("volume"))

    @property
    def base(self) -> tuple[int, str]:
        return int(self.state.get_meta("base_version")), str(self.state.get_meta("base_root"))

    def _loader(self, *extra: dict[str, bytes]) -> Loader:
        def load(h: str) -> Dir:
            for objects in extra:
                if h in objects:
                    return decode_dir(objects[h])
            return self.store.load_dir(h)
        return load

    def info(self) -> dict[str, Any]:
        version, root = self.base
        return {"volume": self.name, "base_version": version, "base_root": root, "state_dir": str(self.state.dir)}

    def status(self) -> list[tuple[str, str]]:
        """(A|M|D, path) for every change since the base version."""
        root, objects, _ = self.state.snapshot(upload=False)
        return [(change_code(c), c[0]) for c in diff(self.base[1], root, self._loader(objects))]

    def diff(self, a: int, b: int) -> list[tuple[str, str]]:
        ra, rb = tree_root(self.client.manifest(self.name, a)), tree_root(self.client.manifest(self.name, b))
        return [(change_code(c), c[0]) for c in diff(ra, rb, self._loader())]

    def update(self, to: int | None = None) -> dict[str, Any]:
        """Move the base to version ``to`` (the latest if None), keeping local changes."""
        target = self.client.manifest(self.name, to)
        self.client.author_hint = target.get("author")  # holds the new tree before the masters know it
        base_version, base_root = self.base
        theirs = tree_root(target)
        ours, objects, _ = self.state.snapshot(upload=False)
        load = self._loader(objects)
        merged = merge3(base_root, ours, theirs, load)
        if merged.conflicts:
            raise MergeConflict(merged.conflicts)
        changes = list(diff(ours, merged.root, self._loader(objects, merged.objects)))
        with self.state.tx():
            self.state.apply_changes(changes, self.unused, self.invalidate)
            self.state.set_meta("base_version", int(target["version"]))
            self.state.set_meta("base_root", theirs)
        return {"from": base_version, "to": int(target["version"]), "changed": len(changes)}

    def commit(self, message: str = "") -> dict[str, Any]:
        """Publish the working tree as the next version; a no-op when nothing changed."""
        for _ in range(MAX_REBASES):
            base_version, base_root = self.base
            self.store.take_staged()  # forget what an earlier snapshot staged
            root, objects, skipped = self.state.snapshot(upload=True)
            staged = self.store.take_staged()
            if root == base_root:
                return {"version": base_version, "noop": True, "skipped": skipped}
            self.store.flush()
            self.store.put_objects(objects)
            # The tree's manifest lists no chunks: its new directory objects and the chunks of its
            # changed files are named so the daemon puts them on `copies` holders before it issues.
            durable = staged + [(h, len(data)) for h, data in objects.items()]
            try:
                m = self.client.commit(self.name, chunks=[], kind="tree", parent=base_version,
                                       meta={"root": root, "message": message}, durable=durable)
            except Conflict:
                self.update(None)  # raises MergeConflict when the changes overlap
                continue
            self.state.set_meta("base_version", int(m["version"]))
            self.state.set_meta("base_root", root)
            return {"version": int(m["version"]), "noop": False, "skipped": skipped}
        raise Conflict(f"{self.name} kept moving; gave up after {MAX_REBASES} rebases")


def init_volume(client: Client, volume: str, store: Store) -> dict[str, Any]:
    """Create a volume whose first version is the empty tree."""
    from fs.tree import EMPTY_DIR, EMPTY_DIR_BYTES
    from mesh.core.keys import validate_key

    validate_key(volume)
    store.put_objects({EMPTY_DIR: EMPTY_DIR_BYTES})
    return client.commit(volume, chunks=[], kind="tree", parent=0, meta={"root": EMPTY_DIR, "message": "init"},
                         durable=[(EMPTY_DIR, len(EMPTY_DIR_BYTES))])
