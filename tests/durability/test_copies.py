"""A version is acknowledged only when its chunks are on `copies` holders."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from mesh.core.identity import Identity
from mesh.core.membership import Config
from mesh.errors import Unavailable
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


async def body(data: bytes):
    for i in range(0, len(data), 1 << 20):
        yield data[i: i + (1 << 20)]


def test_commit_waits_for_a_second_copy_in_the_cluster(tmp_path):
    async def run() -> None:
        hosts = await cluster_of(tmp_path, [("a", "both"), ("a", "node"), ("a", "master"), ("b", "node")])
        (ga, ra), (gb, rb), (gm, rm), (gx, rx) = hosts
        try:
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
        finally:
            await close_all([g for g, _ in hosts])
            for _, r in hosts:
                r.close()

    asyncio.run(run())


def test_no_version_when_the_copy_cannot_be_made(tmp_path):
    async def run() -> None:
        hosts = await cluster_of(tmp_path, [("a", "both"), ("a", "node")])
        (ga, ra), (gb, rb) = hosts
        try:
            rep = ChunkReplicator(ga, ra, copies=2, scope="cluster")
            ra.before_issue = rep.ensure
            # b is alive but serves no "replicate": the copy fails and nothing is issued
            with pytest.raises(Unavailable, match="1 of 2 copies"):
                await ra.ingest("dur/none", body(b"x" * 1000))
            assert ra.meta.latest_version("dur/none") == 0
        finally:
            await close_all([g for g, _ in hosts])
            for _, r in hosts:
                r.close()

    asyncio.run(run())


def test_a_single_host_keeps_one_copy(tmp_path):
    async def run() -> None:
        hosts = await cluster_of(tmp_path, [("a", "both"), ("b", "node")])
        (ga, ra), _ = hosts
        try:
            ra.before_issue = ChunkReplicator(ga, ra, copies=2, scope="cluster").ensure
            m = await ra.ingest("dur/one", body(b"y" * 1000))
            assert m.version == 1
        finally:
            await close_all([g for g, _ in hosts])
            for _, r in hosts:
                r.close()

    asyncio.run(run())
