"""Chunk transfer between two real GossipServices: authenticated, optionally encrypted, never altered unseen."""

from __future__ import annotations

import asyncio
import os

import pytest

from mesh.core.identity import Identity
from mesh.core.manifest import chunk_hash
from mesh.errors import ProtocolError
from mesh.runtime.gossip import GossipService
from mesh.runtime.transfer import ChunkServer, fetch_chunks
from mesh.store.chunks import ChunkStore
from tests.membership.runtime_helpers import close_all, mesh


async def collect(gen) -> list[tuple[str, bytes | None]]:
    return [item async for item in gen]


@pytest.mark.parametrize("encrypt", [False, True])
def test_fetch_in_order_with_missing_and_corrupt(tmp_path, encrypt):
    async def run() -> None:
        a, b = await mesh(tmp_path, 2)
        try:
            store = ChunkStore(tmp_path / "a-chunks")
            ChunkServer(a, store)
            blobs = [os.urandom(n) for n in (1, 4096, 2 * 1024 * 1024)]
            hashes = [chunk_hash(x) for x in blobs]
            for h, x in zip(hashes, blobs, strict=True):
                store.write(h, x)
            absent = chunk_hash(b"nobody has this")
            rotten = chunk_hash(b"rotten")
            store.write(rotten, b"rotteN")  # on disk under the wrong name: the holder must not serve it
            got = await collect(fetch_chunks(b, a.address, a.id, [*hashes, absent, rotten], encrypt=encrypt))
            assert got == [*zip(hashes, blobs, strict=True), (absent, None), (rotten, None)]
        finally:
            await close_all([a, b])

    asyncio.run(run())


def test_holder_must_be_the_host_asked(tmp_path):
    async def run() -> None:
        a, b = await mesh(tmp_path, 2)
        try:
            store = ChunkStore(tmp_path / "a-chunks")
            ChunkServer(a, store)
            with pytest.raises(ProtocolError, match="expected"):
                await collect(fetch_chunks(b, a.address, b.id, [chunk_hash(b"x")], encrypt=False))
        finally:
            await close_all([a, b])

    asyncio.run(run())


def test_unadmitted_host_gets_nothing(tmp_path):
    async def run() -> None:
        (a,) = await mesh(tmp_path, 1)
        stranger = GossipService(Identity(os.urandom(32)), a.config, bind=("127.0.0.9", 0), cluster="x",
                                 role="node", http_addr="-", data_dir=tmp_path / "stranger")
        await stranger.start()  # its own mesh: not admitted to a's
        try:
            store = ChunkStore(tmp_path / "a-chunks")
            ChunkServer(a, store)
            h = chunk_hash(b"secret")
            store.write(h, b"secret")
            got: list = []
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):  # the holder just hangs up
                async for item in fetch_chunks(stranger, a.address, a.id, [h], encrypt=True, timeout=3):
                    got.append(item)
            assert got == []
            assert a.drops.get("unadmitted", 0) >= 1
        finally:
            await close_all([a, stranger])

    asyncio.run(run())

