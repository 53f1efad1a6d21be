"""Fetched copies written with O_DIRECT (``ChunkStore.write(..., direct=True)``): exact bytes and
size whatever the alignment, no padding left behind, a short write finished, and a buffered
fallback on filesystems that refuse O_DIRECT."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os

import pytest

from mesh.core.manifest import chunk_hash
from mesh.store import chunks as chunks_mod
from mesh.store.cache import ChunkCache
from mesh.store.chunks import DIRECT_ALIGN, ChunkStore
from mesh.store.meta import MetaStore


def blob(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = (seed.to_bytes(4, "big") + os.urandom(size))[:size]
    return chunk_hash(data), data


@pytest.fixture
def opened(monkeypatch):
    """The flags of every os.open, in order (the real call still runs)."""
    flags: list[int] = []
    real = os.open

    def spy(path, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        flags.append(f)
        return real(path, f, *args, **kwargs)

    monkeypatch.setattr(chunks_mod.os, "open", spy)
    return flags


@pytest.mark.parametrize("size", [1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, 640 * 1024 + 123,
                                  2 * 1024 * 1024, 3 * 1024 * 1024 + 5])
def test_direct_writes_keep_exact_bytes_and_size(tmp_path, opened, size):
    store = ChunkStore(tmp_path)
    h, data = blob(size)
    assert store.write(h, data, fsync=False, direct=True)
    assert any(f & os.O_DIRECT for f in opened), "the copy did not go through O_DIRECT"
    assert store.path(h).stat().st_size == size
    assert store.read(h) == data  # read verifies the hash
    assert not store.write(h, data, direct=True)  # already there


def test_padding_never_carries_another_chunks_bytes(tmp_path):
    """The thread's buffer is reused: a small chunk after a large one must not end with the large
    one's bytes, on disk or past its end."""
    store = ChunkStore(tmp_path)
    big_h, big = blob(DIRECT_ALIGN * 3, 1)
    small_h, small = blob(100, 2)
    store.write(big_h, big, fsync=False, direct=True)
    store.write(small_h, small, fsync=False, direct=True)
    assert store.path(small_h).read_bytes() == small
    with open(store.path(small_h), "rb") as f:  # what lies in the rest of the block reads as nothing
        f.seek(0, os.SEEK_END)
        assert f.tell() == 100


def test_a_short_write_is_finished_buffered(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path)
    h, data = blob(5 * DIRECT_ALIGN + 7)
    real_write = os.write
    calls: list[int] = []

    def short_then_real(fd, view):  # type: ignore[no-untyped-def]
        calls.append(len(view))
        if len(calls) == 1:  # an unaligned partial write, as a full disk might give
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            return real_write(fd, view[:5000])
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT, "the rest must go buffered"
        return real_write(fd, view)

    monkeypatch.setattr(chunks_mod.os, "write", short_then_real)
    assert store.write(h, data, fsync=True, direct=True)
    assert len(calls) == 2
    assert store.read(h) == data


def test_a_filesystem_without_o_direct_falls_back_to_buffered_for_good(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path)
    real = os.open
    refused: list[int] = []

    def no_direct(path, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        if f & os.O_DIRECT:
            refused.append(f)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, f, *args, **kwargs)

    monkeypatch.setattr(chunks_mod.os, "open", no_direct)
    items = [blob(10_000, i) for i in range(3)]
    for h, data in items:
        assert store.write(h, data, fsync=False, direct=True)
    assert len(refused) == 1 and store.direct is False  # asked once, then buffered
    for h, data in items:
        assert store.read(h) == data


def test_other_errors_are_not_taken_for_a_missing_o_direct(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path)

    def full(path, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks_mod.os, "open", full)
    h, data = blob(100)
    with pytest.raises(Exception, match="writing a chunk"):
        store.write(h, data, direct=True)
    assert store.direct is True


def test_the_cache_keeps_fetched_copies_through_o_direct_when_asked(tmp_path, opened):
    store = ChunkStore(tmp_path / "chunks")
    meta = MetaStore(tmp_path / "meta.sqlite")
    cache = ChunkCache(store, meta, 10 << 20)
    try:
        h, data = blob(700_000)
        assert asyncio.run(cache.store_fetched(h, data))  # by default through the page cache
        assert not any(f & os.O_DIRECT for f in opened)
        h, data = blob(700_000, 1)
        assert asyncio.run(cache.store_fetched(h, data, direct=True))
        assert any(f & os.O_DIRECT for f in opened)
        assert store.read(h) == data
    finally:
        cache.close()
        meta.close()
