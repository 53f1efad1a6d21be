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



@pytest.mark.parametrize("encrypt", [False, True])
def test_requests_to_one_holder_share_a_kept_connection_and_survive_its_idle_close(tmp_path, encrypt, monkeypatch):
    """A reader fetching chunk after chunk from one holder opens one connection, not one per chunk;
    when the holder has closed an idle kept connection, the next request opens a new one unharmed."""
    import mesh.runtime.transfer as transfer

    async def run() -> None:
        a, b = await mesh(tmp_path, 2)
        try:
            store = ChunkStore(tmp_path / "a-chunks")
            server = ChunkServer(a, store)
            blobs = [os.urandom(50_000) for _ in range(6)]
            for x in blobs:
                store.write(chunk_hash(x), x)
            opened = 0
            real_connect = transfer.Transfer._connect

            def counting_connect(self):  # type: ignore[no-untyped-def]
                nonlocal opened
                opened += 1
                return real_connect(self)

            monkeypatch.setattr(transfer.Transfer, "_connect", counting_connect)
            for x in blobs[:4]:
                got = await collect(fetch_chunks(b, a.address, a.id, [chunk_hash(x)], encrypt=encrypt))
                assert got == [(chunk_hash(x), x)]
            assert opened == 1 and server.kept == 1 and server.served_chunks == 4
            monkeypatch.setattr(transfer, "KEEP_IDLE", 0.05)
            got = await collect(fetch_chunks(b, a.address, a.id, [chunk_hash(blobs[4])], encrypt=encrypt))
            await asyncio.sleep(0.3)  # the holder gives up the idle connection
            assert server.kept == 0
            monkeypatch.setattr(transfer, "KEEP_IDLE_CLIENT", 10.0)  # the requester still thinks it usable
            got = await collect(fetch_chunks(b, a.address, a.id, [chunk_hash(blobs[5])], encrypt=encrypt))
            assert got == [(chunk_hash(blobs[5]), blobs[5])]
            assert opened == 2
        finally:
            await close_all([a, b])

    asyncio.run(run())
