"""Helpers for the pure tests: an in-memory object store and flat views of trees."""

from __future__ import annotations

from dataclasses import replace

from fs.tree import DIR, EMPTY_DIR, EMPTY_DIR_BYTES, Entry, decode_dir, dir_object, walk


class MemObjects:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {EMPTY_DIR: EMPTY_DIR_BYTES}

    def load(self, h: str) -> dict[str, Entry]:
        return decode_dir(self.objects[h])

    def add(self, objects: dict[str, bytes]) -> None:
        self.objects.update(objects)

    def build(self, flat: dict[str, Entry]) -> str:
        """Store a tree given as {path: entry} (a directory's ref is ignored); return its root."""
        children: dict[str, dict[str, Entry]] = {"": {}}
        for path in sorted(flat, key=lambda p: p.count("/")):
            parent, _, name = path.rpartition("/")
            children[parent][name] = flat[path]
            if flat[path].kind == DIR:
                children[path] = {}

        def make(path: str) -> str:
            entries = {}
            for name, e in children[path].items():
                child = f"{path}/{name}" if path else name
                entries[name] = replace(e, ref=make(child)) if e.kind == DIR else e
            h, data = dir_object(entries)
            self.objects[h] = data
            return h

        return make("")

    def flatten(self, root: str) -> dict[str, Entry]:
        return {p: replace(e, ref="") for p, e in walk(root, self.load)}
