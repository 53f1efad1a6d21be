"""The fetch path with a cache that keeps nothing or little: readers still get every byte, a reader
that could not keep a chunk is never a holder of it, and the cluster's one WAN transfer goes to a
reader that keeps it. Whole hosts in one process (tests/fetch_runtime/helpers.py)."""

from __future__ import annotations

import asyncio
import os

from tests.fetch_runtime.helpers import close_mesh, make_mesh, run_bounded, wait_known

LAYOUT = [("a0", "a", "both"), ("b0", "b", "both"), ("b1", "b", "node"), ("b2", "b", "node")]
SIZE = 6 * 1024 * 1024


def test_a_reader_without_room_serves_through_and_is_no_holder(tmp_path):
    async def run() -> None:
        nodes = await make_mesh(tmp_path, LAYOUT)
        try:
            a0, b0, b1, b2 = (nodes[n] for n in ("a0", "b0", "b1", "b2"))
            b1.repo.cache.set_quota(0)  # keeps nothing
            b2.repo.cache.set_quota(1 << 20)  # keeps about one chunk
            data = os.urandom(SIZE)
            manifest = await a0.put("thru", data)
            chunks = {r.hash for r in manifest.chunks}
            await wait_known(b1, manifest, "a")

            got = await asyncio.gather(b1.read("thru"), b2.read("thru"))
            assert got == [data, data]
            assert not any(b1.repo.chunks.has(h) for h in chunks) and len(b1.repo.meta.has_chunks(list(chunks))) == 0
            st1, st2 = b1.repo.cache.stats(), b2.repo.cache.stats()
            assert st1["uncached"] >= 1 and st1["used_bytes"] == 0
            assert st2["used_bytes"] <= 1 << 20
            # b1 never reported what it did not keep: the cluster's index does not send readers there
            found = await b0.holders.lookup(sorted(chunks), other_clusters=False)
            assert not any(h.node == b1.id for hs in found.values() for h in hs)
            assert all({h.node for h in found[c]} <= {b2.id} for c in chunks)

            assert await b0.read("thru") == data  # from b2 where it kept a copy, else across the WAN again
            assert all(b0.repo.chunks.has(h) for h in chunks), "b0 has room: it keeps every chunk"
            assert await b1.read("thru") == data  # now from b0 inside the cluster
            assert b1.repo.cache.used == 0
        finally:
            await close_mesh(nodes)

    run_bounded(run(), 120)
