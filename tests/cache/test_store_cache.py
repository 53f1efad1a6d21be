"""The persistent chunk cache (mesh.store.cache) on a real disk and SQLite: LRU under a quota, kept
chunks never evicted, pins while in use, and the order and the kept set surviving a restart."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from mesh.core.identity import Identity
from mesh.core.manifest import ChunkRef, chunk_hash
from mesh.runtime.repository import Repository
from mesh.store.cache import ChunkCache
from mesh.store.chunks import ChunkStore
from mesh.store.meta import MetaStore

K = 1000


def blob(i: int, size: int = K) -> tuple[str, bytes]:
    data = i.to_bytes(4, "big") + os.urandom(size - 4)
    return chunk_hash(data), data


class Host:
    """A store directory opened (and reopened, as after a restart) with a cache of some quota."""

    def __init__(self, root: Path, quota: int | None) -> None:
        self.root = root
        self.open(quota)

    def open(self, quota: int | None) -> None:
        self.chunks = ChunkStore(self.root / "chunks")
        self.meta = MetaStore(self.root / "meta.sqlite")
        self.removed: list[str] = []
        self.cache = ChunkCache(self.chunks, self.meta, quota)
        self.cache.on_removed = self.removed.extend

    def close(self) -> None:
        self.cache.close()
        self.meta.close()

    def reopen(self, quota: int | None) -> None:
        self.close()
        self.open(quota)

    def store(self, *items: tuple[str, bytes]) -> list[bool]:
        async def go() -> list[bool]:
            return [await self.cache.store_fetched(h, d) for h, d in items]

        stored = asyncio.run(go())
        # a fetched copy's record is committed after the copy is handed over: wait for it (the
        # metadata writer runs its queue in order)
        self.meta.submit(lambda _conn: None).result()
        return stored

    def held(self, h: str) -> bool:
        """On disk and in the metadata: what a reader and the holder report see."""
        return self.chunks.has(h) and self.meta.has_chunks([h]) == {h}

    def cached_rows(self) -> set[str]:
        return {r[0] for r in self.meta.reader.execute("SELECT hash FROM cache_chunks")}


def test_lru_victims_leave_disk_metadata_and_holder_reports(tmp_path):
    host = Host(tmp_path, quota=3 * K)
    a, b, c, d = (blob(i) for i in range(4))
    assert host.store(a, b, c) == [True, True, True]
    host.cache.touch(a[0])  # a is read again: b is now the least recently used
    assert host.store(d) == [True]
    assert not host.held(b[0]) and not host.chunks.path(b[0]).exists()
    assert all(host.held(x[0]) for x in (a, c, d))
    assert host.removed == [b[0]]
    assert host.cache.used == 3 * K and host.cache.evictions == 1 and host.cache.evicted_bytes == K
    assert host.cached_rows() == {a[0], c[0], d[0]}
    host.close()


def test_kept_chunks_never_count_nor_go(tmp_path):
    host = Host(tmp_path, quota=2 * K)
    own = [blob(i) for i in range(10, 15)]  # written here (as a PUT does): recorded, not cached
    for h, d in own:
        host.chunks.write(h, d)
    host.meta.write_sync(lambda conn: conn.executemany(
        "INSERT INTO chunks(hash, size) VALUES (?, ?)", [(h, len(d)) for h, d in own]))
    fetched = [blob(i) for i in range(6)]
    assert host.store(*fetched) == [True] * 6
    assert all(host.held(h) for h, _ in own), "a kept chunk was evicted"
    assert host.cache.used == 2 * K and [x[0] for x in fetched if host.held(x[0])] == [fetched[4][0], fetched[5][0]]
    assert host.store(own[0]) == [True]  # fetched again while kept: stays kept, not cached
    assert own[0][0] not in host.cache and host.held(own[0][0])
    # a cached copy that becomes kept (a commit names it, or it is asked for as a replica) stays
    asyncio.run(host.cache.keep([fetched[4][0]]))
    assert host.store(blob(20), blob(21)) == [True, True]
    assert host.held(fetched[4][0]) and not host.held(fetched[5][0])
    host.close()


def test_in_use_copies_are_pinned_and_a_full_cache_serves_through(tmp_path):
    host = Host(tmp_path, quota=2 * K)
    a, b, c, big = blob(0), blob(1), blob(2), blob(3, 3 * K)
    host.store(a, b)
    with host.cache.using([a[0]]):  # a read streams a: b goes instead, though a is older
        assert host.store(c) == [True]
        assert host.held(a[0]) and not host.held(b[0])
        with host.cache.using([c[0]]):  # everything left is pinned: no room, not kept
            assert host.store(b) == [False]
            assert not host.chunks.has(b[0]) and host.cache.uncached == 1
    assert host.store(big) == [False], "a chunk larger than the quota is never kept"
    assert not host.chunks.has(big[0])
    # unpinned last, a re-entered the order as the most recently used: c goes
    assert host.store(b) == [True] and host.held(b[0])
    assert host.held(a[0]) and not host.held(c[0]) and host.cache.used == 2 * K
    host.close()


def test_restart_keeps_lru_order_and_kept_set(tmp_path):
    host = Host(tmp_path, quota=4 * K)
    a, b, c, d, e, f = (blob(i) for i in range(6))
    host.store(a, b, c, d)
    host.cache.touch(a[0])  # order now b, c, d, a
    asyncio.run(host.cache.keep([b[0]]))  # b becomes kept: never evicted
    host.reopen(quota=4 * K)
    assert len(host.cache) == 3 and host.cache.used == 3 * K
    host.store(e, f)  # room for one more, then the least recently used (c) goes
    assert not host.held(c[0]) and host.removed == [c[0]]
    assert all(host.held(x[0]) for x in (a, b, d, e, f))
    host.store(blob(7))
    assert not host.held(d[0]) and host.held(a[0]), "the touch before the restart was lost"
    host.close()


def test_restart_with_a_smaller_quota_trims_and_forgets_vanished_files(tmp_path):
    host = Host(tmp_path, quota=None)
    items = [blob(i) for i in range(5)]
    host.store(*items)
    assert host.cache.quota is None and host.cache.used == 5 * K
    os.unlink(host.chunks.path(items[4][0]))  # lost behind our back
    host.reopen(quota=2 * K)
    assert [host.held(h) for h, _ in items] == [False, False, True, True, False]
    assert host.cached_rows() == {items[2][0], items[3][0]}
    assert host.meta.has_chunks([h for h, _ in items]) == {items[2][0], items[3][0]}
    host.close()


def test_a_copy_an_upload_is_writing_is_not_evicted(tmp_path):
    busy: set[str] = set()
    chunks = ChunkStore(tmp_path / "chunks")
    meta = MetaStore(tmp_path / "meta.sqlite")
    cache = ChunkCache(chunks, meta, 2 * K, busy=busy.__contains__)
    a, b, c = blob(0), blob(1), blob(2)

    async def go() -> None:
        assert await cache.store_fetched(*a) and await cache.store_fetched(*b)
        busy.add(a[0])  # an upload found a's file and will record it as its own
        assert await cache.store_fetched(*c)

    asyncio.run(go())
    assert chunks.has(a[0]) and not chunks.has(b[0]) and chunks.has(c[0])
    cache.close()
    meta.close()


async def _body(data: bytes):
    for i in range(0, len(data), 1 << 20):
        yield data[i:i + (1 << 20)]


def test_repository_uploads_are_kept_and_fetched_copies_evicted(tmp_path):
    """The repository's paths: a PUT's chunks are kept even when a fetched copy of them was cached;
    reads pin the copies they stream."""

    async def go() -> None:
        repo = Repository(tmp_path / "r", Identity(b"\x07" * 32), clock=time.time, cache_quota=2 * K)
        try:
            x, y, z = blob(0), blob(1), blob(2)
            assert await repo.cache.store_fetched(*x, repo.executor)
            manifest = await repo.ingest("own", _body(x[1]))  # the same bytes written here
            assert [r.hash for r in manifest.chunks] == [x[0]]
            assert x[0] not in repo.cache, "a chunk a version of this host names is kept"
            assert await repo.put_chunk(y[0], y[1]) is True
            for i in range(3, 8):
                assert await repo.cache.store_fetched(*blob(i), repo.executor)
            assert repo.chunks.has(x[0]) and repo.chunks.has(y[0]) and repo.cache.used == 2 * K
            assert await repo.cache.store_fetched(*z, repo.executor)
            reading = repo.stream_chunks([ChunkRef(z[0], K)])
            assert await reading.__anext__() == z[1]  # z is pinned while this read is open
            for i in range(8, 11):
                await repo.cache.store_fetched(*blob(i), repo.executor)
            assert repo.chunks.has(z[0])
            await reading.aclose()
            await repo.cache.store_fetched(*blob(11), repo.executor)
            await repo.cache.store_fetched(*blob(12), repo.executor)
            assert not repo.chunks.has(z[0])
        finally:
            repo.close()

    asyncio.run(go())


def test_a_quarantined_copy_is_stored_again(tmp_path):
    host = Host(tmp_path, quota=3 * K)
    a = blob(0)
    host.store(a)
    path = host.chunks.path(a[0])
    path.write_bytes(b"x" + a[1][1:])  # torn or rotten on disk
    try:
        host.chunks.read(a[0])
    except Exception:  # noqa: BLE001 -- CorruptChunk: moved to quarantine
        pass
    assert not host.chunks.has(a[0])
    assert host.store(a) == [True]
    assert host.chunks.read(a[0]) == a[1] and host.held(a[0]) and host.cache.used == K
    host.close()


def test_an_uploaded_chunk_that_was_cached_is_kept(tmp_path):
    async def go() -> None:
        repo = Repository(tmp_path / "r", Identity(b"\x08" * 32), clock=time.time, cache_quota=2 * K)
        try:
            x = blob(0)
            assert await repo.cache.store_fetched(*x, repo.executor)
            assert await repo.put_chunk(x[0], x[1]) is False  # already here, as a cached copy
            assert x[0] not in repo.cache
            for i in range(1, 5):
                await repo.cache.store_fetched(*blob(i), repo.executor)
            assert repo.chunks.has(x[0]) and repo.meta.has_chunks([x[0]]) == {x[0]}
        finally:
            repo.close()

    asyncio.run(go())


def test_random_operations_keep_the_invariants_and_a_restart_the_order(tmp_path):
    """Seeded random stores, touches, pins, keeps and restarts: the cache never exceeds its quota, a
    kept chunk is never deleted, disk, metadata and policy agree, and a restart restores the order."""
    import random

    rng = random.Random(5)
    quota = 6 * K
    host = Host(tmp_path, quota=quota)
    pool = [blob(i, rng.choice((K // 2, K, 2 * K))) for i in range(40)]
    kept: set[str] = set()
    pinned: list[list[str]] = []
    for step in range(400):
        op = rng.random()
        h, data = rng.choice(pool)
        if op < 0.5:
            host.store((h, data))
        elif op < 0.7:
            host.cache.touch(h)
        elif op < 0.8 and len(pinned) < 3:
            pinned.append(host.cache.acquire([h]))
        elif op < 0.9 and pinned:
            host.cache.release(pinned.pop(rng.randrange(len(pinned))))
        elif op < 0.93 and host.chunks.has(h):
            asyncio.run(host.cache.keep([h]))
            kept.add(h)
        elif op < 0.96 and not pinned:
            order = list(host.cache.policy._lru)
            host.reopen(quota)
            assert list(host.cache.policy._lru) == order, f"step {step}: the LRU order changed over a restart"
        assert host.cache.used <= quota, f"step {step}"
        assert all(host.held(k) for k in kept), f"step {step}: a kept chunk went"
        cached = {x for x, _ in pool if x in host.cache}
        assert cached.isdisjoint(kept)
        assert cached == {x for x, _ in pool if host.chunks.has(x)} - kept, f"step {step}: disk and policy disagree"
    pending = host.cache.flush()
    if pending is not None:
        pending.result()
    assert host.cached_rows() == {x for x, _ in pool if x in host.cache}
    host.close()


def test_a_copy_no_other_host_holds_is_kept_and_the_mesh_is_asked_once_per_batch(tmp_path):
    """The mesh says which victims nobody else holds: those stay (the last copy of a committed
    version is never evicted), the others go; one question covers a batch of victims."""
    host = Host(tmp_path, quota=4 * K)
    a, b, c, d, e = (blob(i) for i in range(5))
    asked: list[list[str]] = []
    only_here = {b[0]}

    async def last_copy(chunks: list[str]) -> set[str]:
        asked.append(list(chunks))
        return {h for h in chunks if h in only_here}

    host.cache.last_copy = last_copy
    assert host.store(a, b, c, d) == [True] * 4
    assert host.store(e) == [True]
    assert asked and set(asked[0]) >= {a[0]} and len(asked) == 1
    assert host.held(b[0]), "the last copy the mesh knows of was evicted"
    assert not host.held(a[0]) and host.removed == [a[0]]
    assert host.cache.stats()["spared_last_copies"] == 1
    host.close()


def test_when_the_mesh_cannot_answer_nothing_is_evicted(tmp_path):
    host = Host(tmp_path, quota=2 * K)
    a, b, c = (blob(i) for i in range(3))

    async def unreachable(chunks: list[str]) -> set[str]:
        raise ConnectionError("no master answers")

    host.cache.last_copy = unreachable
    assert host.store(a, b) == [True, True]
    assert host.store(c) == [False]  # served through, not kept: a and b may be the last copies
    assert host.held(a[0]) and host.held(b[0]) and not host.held(c[0])
    host.close()
