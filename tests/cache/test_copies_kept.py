"""Chunks a host holds as a `copies` replica are kept, never evicted, even when it had them as cached
copies before the writer asked: a cached copy is never one of the copies the mesh counts on."""

from __future__ import annotations

import asyncio
import os

from mesh.core.manifest import chunk_hash
from mesh.runtime.durability import ChunkReplicator
from tests.durability.test_copies import body, running

K = 64 * 1024


def test_replica_chunks_are_kept_and_a_cached_copy_asked_for_becomes_kept(tmp_path):
    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("a", "node")]) as hosts:
            (ga, ra), (gb, rb) = hosts
            ra.before_issue = ChunkReplicator(ga, ra, copies=2, scope="cluster").ensure
            ChunkReplicator(gb, rb, copies=2, scope="cluster")
            rb.cache.set_quota(4 * K)
            small = os.urandom(1000)  # one chunk; b already has it as a cached copy (read earlier)
            h_small = chunk_hash(small)
            assert await rb.cache.store_fetched(h_small, small, rb.executor)
            assert h_small in rb.cache

            m1 = await ra.ingest("dur/small", body(small))
            big = os.urandom(3 * 1024 * 1024)
            m2 = await ra.ingest("dur/big", body(big))  # far more than b's quota: all kept on b
            replica = [c.hash for c in m1.chunks + m2.chunks]
            assert h_small not in rb.cache, "the cached copy asked for as a replica is kept now"
            assert rb.cache.used == 0

            for i in range(12):  # b's cache churns through fetched copies
                data = i.to_bytes(2, "big") + os.urandom(K - 2)
                assert await rb.cache.store_fetched(chunk_hash(data), data, rb.executor)
            assert rb.cache.evictions >= 8 and rb.cache.used <= 4 * K
            assert all(rb.chunks.has(h) for h in replica), "a replica chunk was evicted"
            assert rb.meta.has_chunks(replica) == set(replica)
            assert not rb.meta.reader.execute(
                f"SELECT 1 FROM cache_chunks WHERE hash IN ({','.join('?' * len(replica))})", replica).fetchall()

    asyncio.run(run())
