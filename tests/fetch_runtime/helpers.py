"""Whole hosts in one process on 127.0.0.x: GossipService + Repository + IssuerService + ChunkServer +
HolderService + MeshRemote each, wired the way the daemon wires them, with real sockets and disks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh.core.identity import Identity
from mesh.core.manifest import Manifest
from mesh.core.membership import Config
from mesh.runtime.fetch import READ_CONFIG, MeshRemote
from mesh.runtime.gossip import GossipService
from mesh.runtime.holders import HolderService, held_chunks
from mesh.runtime.issuance import IssuanceSettings, IssuerService
from mesh.runtime.repository import Repository
from mesh.runtime.transfer import ChunkServer

SETTINGS = IssuanceSettings(replicas=3, commit_timeout=3.0, retry_interval=0.1, send_timeout=1.0, poll_interval=0.05)
FETCH = replace(READ_CONFIG, timeout_base=3.0, claim_timeout=2.0, claim_wait=5.0, lookup_timeout=3.0)


async def wait_for(predicate: Callable[[], bool], limit: float, what: str) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what} not reached within {limit} s")
        await asyncio.sleep(0.02)


@dataclass
class Node:
    index: int
    name: str
    cluster: str
    role: str
    gossip: GossipService
    repo: Repository
    issuer: IssuerService
    server: ChunkServer
    holders: HolderService
    remote: MeshRemote

    @property
    def id(self) -> str:
        return self.gossip.id

    async def put(self, key: str, data: bytes) -> Manifest:
        async def body() -> Any:
            for i in range(0, len(data), 1 << 20):
                yield data[i:i + (1 << 20)]

        manifest = await self.repo.ingest(key, body())
        self.holders.on_chunks_stored((r.hash, r.size) for r in manifest.chunks)  # the daemon's hook
        return manifest

    async def read(self, key: str, version: int | None = None) -> bytes:
        manifest = await self.repo.find(key, version)
        return b"".join([piece async for piece in self.repo.read_range_anywhere(manifest, 0, manifest.size)])

    async def close(self) -> None:
        for step in (self.holders.close(), self.issuer.close(), self.gossip.close()):
            with contextlib.suppress(Exception):
                await step
        self.repo.close()


async def make_node(root: Path, index: int, name: str, cluster: str, role: str, costs: dict[str, Any],
                    first: GossipService | None, token: str | None) -> Node:
    identity = Identity(bytes([index + 1]) * 32)
    home = root / name
    home.mkdir(parents=True)
    gossip = GossipService(identity, Config.local(), bind=(f"127.0.0.{index + 1}", 0), cluster=cluster, role=role,
                           http_addr=f"http://127.0.0.{index + 1}:8080", data_dir=home)
    repo = Repository(home, identity, clock=time.time)
    issuer = IssuerService(identity, gossip, repo.meta, SETTINGS)
    repo.issuer = issuer.issue
    server = ChunkServer(gossip, repo.chunks, repo.executor)
    holders = HolderService(gossip, held_chunks(repo.meta), ttl=10.0)
    remote = MeshRemote(gossip, repo, holders, issuer, costs=costs, config=FETCH)
    repo.remote = remote
    await gossip.start(new_mesh=first is None)
    if first is not None:
        assert first.address is not None
        await gossip.join([first.address], token)
    await issuer.start()
    await holders.start()
    return Node(index, name, cluster, role, gossip, repo, issuer, server, holders, remote)


async def make_mesh(root: Path, layout: list[tuple[str, str, str]], costs: dict[str, Any] | None = None) -> dict[str, Node]:
    """``layout``: (name, cluster, role); the first creates the mesh. Waits for the roster and membership."""
    nodes: dict[str, Node] = {}
    first: Node | None = None
    token = None
    for i, (name, cluster, role) in enumerate(layout):
        node = await make_node(root, i, name, cluster, role, costs or {}, first.gossip if first else None, token)
        if first is None:
            first, token = node, node.gossip.make_token()
        nodes[name] = node
    masters = sum(1 for _, _, role in layout if role in ("master", "both"))
    ids = {n.id for n in nodes.values()}
    await wait_for(lambda: all(n.issuer.roster is not None and len(n.issuer.roster.masters) == masters
                               and {m.id for m in n.gossip.members() if m.state.value == "alive"} == ids
                               for n in nodes.values()), 20, "mesh convergence")
    return nodes


async def close_mesh(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        await node.close()


async def wait_known(reader: Node, manifest: Manifest, cluster: str, limit: float = 10.0) -> None:
    """Until ``reader``'s lookups see a holder in ``cluster`` for every chunk of ``manifest``."""
    start = time.monotonic()
    hashes = sorted({r.hash for r in manifest.chunks})
    while True:
        found = await reader.holders.lookup(hashes)
        if all(any(h.cluster == cluster for h in found[c]) for c in hashes):
            return
        if time.monotonic() - start > limit:
            raise AssertionError(f"holders in {cluster} not reported within {limit} s")
        await asyncio.sleep(0.05)



def run_bounded(coro: Any, limit: float = 90.0) -> None:
    """``asyncio.run`` with a limit; on a hang, the stacks of every task are in the failure message."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=limit)
        if task in done:
            return task.result()
        stacks = []
        for t in asyncio.all_tasks():
            frames = [f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                      for f in t.get_stack(limit=6)]
            stacks.append(" <- ".join(frames))
        task.cancel()
        raise AssertionError(f"hung for {limit} s; tasks:\n" + "\n".join(sorted(stacks)))

    asyncio.run(main())
