"""A version is acknowledged only when its chunks are on `copies` holders."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.core.identity import Identity
from mesh.core.manifest import ChunkRef, chunk_hash
from mesh.core.membership import Config
from mesh.errors import ChunkMissing, InvalidRequest, Unavailable
from mesh.runtime import durability
from mesh.runtime.durability import ChunkReplicator
from mesh.runtime.gossip import GossipService
from mesh.runtime.repository import Repository
from mesh.runtime.transfer import ChunkServer
from tests.membership.runtime_helpers import close_all, states, wait_for


async def host(tmp: Path, i: int, cluster: str, role: str) -> tuple[GossipService, Repository]:
    g = GossipService(Identity(bytes([i + 40]) * 32), Config.local(), bind=(f"127.0.0.{i + 1}", 0),
                      cluster=cluster, role=role, http_addr="-", data_dir=tmp / f"h{i}")
    repo = Repository(tmp / f"h{i}", g.identity, clock=time.time)
    ChunkServer(g, repo.chunks, repo.executor)
    return g, repo


async def cluster_of(tmp: Path, layout: list[tuple[str, str]]) -> list[tuple[GossipService, Repository]]:
    hosts = [await host(tmp, i, c, r) for i, (c, r) in enumerate(layout)]
    first = hosts[0][0]
    await first.start()
    token = first.make_token()
    for g, _ in hosts[1:]:
        await g.start(new_mesh=False)
        await g.join([first.address], token)
    ids = {g.id for g, _ in hosts}
    await wait_for(lambda: all(states(g) == dict.fromkeys(ids, "alive") for g, _ in hosts), 10, "convergence")
    return hosts


@contextlib.asynccontextmanager
async def running(tmp: Path, layout: list[tuple[str, str]]) -> AsyncIterator[list[tuple[GossipService, Repository]]]:
    """``cluster_of``, closed again (gossip services and repositories) however the test ends."""
    hosts = await cluster_of(tmp, layout)
    try:
        yield hosts
    finally:
        await close_all([g for g, _ in hosts])
        for _, r in hosts:
            r.close()


def count_copy_requests(g: GossipService) -> list[int]:
    """The sizes (in chunks) of the copy requests ``g`` sends from now on, appended as they go."""
    sent: list[int] = []
    real = g.request

    async def counting(addr, kind, body, timeout=30.0):  # type: ignore[no-untyped-def]
        if kind == durability.KIND:
            sent.append(len(body["hashes"]))
        return await real(addr, kind, body, timeout=timeout)

    g.request = counting  # type: ignore[method-assign]
    return sent


async def body(data: bytes):
    for i in range(0, len(data), 1 << 20):
        yield data[i: i + (1 << 20)]


def test_commit_waits_for_a_second_copy_in_the_cluster(tmp_path):
    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("a", "node"), ("a", "master"), ("b", "node")]) as hosts:
            (ga, ra), (gb, rb), (gm, rm), (gx, rx) = hosts
            rep = ChunkReplicator(ga, ra, copies=2, scope="cluster")
            for g, r in hosts[1:]:
                ChunkReplicator(g, r, copies=2, scope="cluster")
            ra.before_issue = rep.ensure
            data = os.urandom(5 * 1024 * 1024)
            m = await ra.ingest("dur/k", body(data))
            hashes = [c.hash for c in m.chunks]
            assert all(rb.chunks.has(h) for h in hashes), "the other store host of cluster a has a copy"
            assert not any(rm.chunks.has(h) for h in hashes), "a master without the store role holds none"
            assert not any(rx.chunks.has(h) for h in hashes), "copies stay in the writer's cluster"
            assert rb.meta.has_chunks(hashes) == set(hashes)

    asyncio.run(run())


def test_no_version_when_the_copy_cannot_be_made(tmp_path):
    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("a", "node")]) as hosts:
            (ga, ra), (gb, rb) = hosts
            rep = ChunkReplicator(ga, ra, copies=2, scope="cluster")
            ra.before_issue = rep.ensure
            # b is alive but serves no "replicate": the copy fails and nothing is issued
            with pytest.raises(Unavailable, match="1 of 2 copies"):
                await ra.ingest("dur/none", body(b"x" * 1000))
            assert ra.meta.latest_version("dur/none") == 0

    asyncio.run(run())


def test_a_single_host_keeps_one_copy(tmp_path):
    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("b", "node")]) as hosts:
            (ga, ra), _ = hosts
            ra.before_issue = ChunkReplicator(ga, ra, copies=2, scope="cluster").ensure
            m = await ra.ingest("dur/one", body(b"y" * 1000))
            assert m.version == 1

    asyncio.run(run())


async def _put_chunks(repo: Repository, n: int, size: int = 3000) -> list[ChunkRef]:
    """``n`` chunks uploaded as eltonfs uploads them (PUT /v1/chunks/{hash})."""
    refs = []
    for _ in range(n):
        data = os.urandom(size)
        h = chunk_hash(data)
        await repo.put_chunk(h, data)
        refs.append(ChunkRef(h, size))
    return refs


def test_a_tree_commit_copies_the_chunks_it_names_durable(tmp_path, monkeypatch):
    """An eltonfs commit lists no chunks in its manifest: the ones it names in ``durable`` (its new
    directory objects and file chunks) are on the second store host of the cluster before it is issued,
    in requests of at most MAX_BATCH_HASHES chunks."""
    monkeypatch.setattr(durability, "MAX_BATCH_HASHES", 4)

    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("a", "node"), ("b", "node")]) as hosts:
            (ga, ra), (gb, rb), (gx, rx) = hosts
            ra.before_issue = ChunkReplicator(ga, ra, copies=2, scope="cluster").ensure
            for g, r in hosts[1:]:
                ChunkReplicator(g, r, copies=2, scope="cluster")
            sent = count_copy_requests(ga)

            refs = await _put_chunks(ra, 10)
            m = await ra.commit("dur/vol", [], kind="tree", meta={"root": refs[0].hash}, durable=refs + refs[:2])
            assert m.version == 1 and m.chunks == ()
            hashes = [r.hash for r in refs]
            assert all(rb.chunks.has(h) for h in hashes), "every durable chunk is on the second host"
            assert rb.meta.has_chunks(hashes) == set(hashes)
            assert not any(rx.chunks.has(h) for h in hashes), "copies stay in the writer's cluster"
            assert sorted(sent) == [2, 4, 4], "10 distinct chunks in requests of at most 4"

            more = await _put_chunks(ra, 2)  # the old request shape: no durable chunks, nothing copied
            m2 = await ra.commit("dur/vol", [], kind="tree", meta={"root": more[0].hash}, expected_parent=1)
            assert m2.version == 2 and not any(rb.chunks.has(r.hash) for r in more)

    asyncio.run(run())


def test_a_durable_chunk_not_stored_here_fails_the_commit(tmp_path):
    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("a", "node")]) as hosts:
            (ga, ra), (gb, rb) = hosts
            ra.before_issue = ChunkReplicator(ga, ra, copies=2, scope="cluster").ensure
            ChunkReplicator(gb, rb, copies=2, scope="cluster")
            refs = await _put_chunks(ra, 2)
            absent = ChunkRef(chunk_hash(b"never uploaded"), 14)
            with pytest.raises(ChunkMissing, match=f"not stored here, first {absent.hash}"):
                await ra.commit("dur/miss", [], kind="tree", meta={"root": refs[0].hash}, durable=[*refs, absent])
            with pytest.raises(InvalidRequest, match="has 3000 bytes, not 7"):
                await ra.commit("dur/miss", [], kind="tree", meta={"root": refs[0].hash},
                                durable=[ChunkRef(refs[0].hash, 7)])
            with pytest.raises(InvalidRequest, match="not a chunk hash"):
                await ra.commit("dur/miss", [], kind="tree", meta={"root": refs[0].hash},
                                durable=[ChunkRef("xyz", 1)])
            assert ra.meta.latest_version("dur/miss") == 0
            assert not any(rb.chunks.has(r.hash) for r in refs), "nothing copied for a refused commit"

    asyncio.run(run())


def test_content_a_host_confirmed_is_not_asked_for_again(tmp_path):
    async def run() -> None:
        async with running(tmp_path, [("a", "both"), ("a", "node")]) as hosts:
            (ga, ra), (gb, rb) = hosts
            rep = ChunkReplicator(ga, ra, copies=2, scope="cluster")
            ChunkReplicator(gb, rb, copies=2, scope="cluster")
            ra.before_issue = rep.ensure
            asked = count_copy_requests(ga)
            data = os.urandom(300 * 1024)
            one = await ra.ingest("dur/one", body(data))
            assert len(asked) == 1 and all(rb.chunks.has(r.hash) for r in one.chunks)
            await ra.ingest("dur/two", body(data))  # the same content under another key
            assert len(asked) == 1, "b confirmed these chunks: no second request"
            await ra.ingest("dur/three", body(data + b"!"))  # new content is copied as before
            assert len(asked) == 2

    asyncio.run(run())


def test_copy_candidates_are_ordered_by_the_rtt_estimate_not_only_by_direct_probes() -> None:
    """A store host this one never probed directly has a Vivaldi estimate (``rtt_estimate``); it is
    ranked by it, not pushed behind every probed host as if its RTT were unknown."""
    from mesh.core.membership import MemberInfo, MemberState

    def member(node: str, rtt: float | None, estimate: float | None, cluster: str = "a") -> MemberInfo:
        return MemberInfo(node, cluster, "node", ("127.0.0.1", 1), "-", MemberState.ALIVE, 1, rtt, 0.0, estimate)

    class Members:
        id, cluster = "me", "a"

        def members(self) -> list[MemberInfo]:
            return [member("me", None, None), member("probed-far", 0.005, 0.005),
                    member("estimated-near", None, 0.001), member("unknown", None, None),
                    member("other-cluster", 0.0001, 0.0001, cluster="b")]

        def register_stream_handler(self, kind: str, handler: object) -> None:
            pass

    replicator = ChunkReplicator(Members(), None, copies=2, scope="mesh")  # type: ignore[arg-type]
    alive, known = replicator.candidates()
    assert [m.id for m in alive] == ["estimated-near", "probed-far", "unknown", "other-cluster"]
    assert known == 4
