"""ChunkStore: a chunk directory is fsynced only when a chunk got its name in it since its last fsync."""

from __future__ import annotations

from mesh.core.manifest import chunk_hash
from mesh.store.chunks import ChunkStore


def test_a_directory_is_synced_once_per_change(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path / "chunks")
    a = b"some bytes"
    h = chunk_hash(a)
    assert store.dirs_to_sync([h]) == [h[:2]], "at start every directory counts as changed"
    store.sync_dirs([h])
    assert store.dirs_to_sync([h]) == []
    assert store.write(h, a) is True
    assert store.dirs_to_sync([h]) == [h[:2]], "a rename since the last fsync"
    synced: list[int] = []
    real_fsync = __import__("os").fsync
    monkeypatch.setattr("mesh.store.chunks.os.fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store.sync_dirs([h])
    assert len(synced) == 1 and store.dirs_to_sync([h]) == []
    assert store.write(h, a) is False, "the same content again is not written"
    store.sync_dirs([h])
    assert len(synced) == 1, "no rename since: no fsync"


def test_a_restarted_store_syncs_what_it_finds(tmp_path):
    a = b"kept across a restart"
    h = chunk_hash(a)
    ChunkStore(tmp_path / "chunks").write(h, a)
    again = ChunkStore(tmp_path / "chunks")  # the page cache may still hold the rename
    assert again.has(h) and again.dirs_to_sync([h]) == [h[:2]]


def test_both_ways_of_naming_a_chunk_count_as_a_change(tmp_path):
    """A chunk is linked from an unnamed file (O_TMPFILE) or, where that is refused, renamed from
    ``tmp``: either way its directory needs the next fsync, and nothing is left in ``tmp``."""
    for linked in (True, False):
        store = ChunkStore(tmp_path / f"chunks-{linked}")
        store._tmpfile = linked
        data = f"named {linked}".encode()
        h = chunk_hash(data)
        store.sync_dirs([h])
        assert store.write(h, data) is True and store.read(h) == data
        assert store.dirs_to_sync([h]) == [h[:2]]
        assert store.write(h, data) is False
        assert list(store.tmp.iterdir()) == []
