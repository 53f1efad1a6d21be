"""Chunk durability at commit: a version is issued only once its chunks are on ``copies`` holders.

The writer asks ``copies - 1`` other store hosts (role node or both) to pull the new chunks from
it over the transfer layer; each stores them durably (fsync, then its directory) before it answers.
``copies_scope`` picks where: the writer's cluster (no WAN cost at commit, survives a host) or the
whole mesh (survives a cluster, pays the WAN). When the scope holds fewer store hosts than
``copies``, every one of them is used (a single host keeps one copy); when enough exist but too few
answer, the commit fails with an error naming them, and nothing is issued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.core.manifest import ChunkRef, chunk_hash
from mesh.core.membership import MemberInfo
from mesh.errors import EltonError, InvalidRequest, ProtocolError, Unavailable
from mesh.runtime.gossip import GossipService, StreamRequest, parse_addr
from mesh.runtime.repository import Repository
from mesh.runtime.transfer import MAX_HASHES_PER_REQUEST, fetch_chunks
from mesh.store.meta import record_chunks

log = logging.getLogger("elton.durability")

KIND = "replicate"
STORE_ROLES = ("node", "both")
BASE_TIMEOUT = 30.0
ASSUMED_RATE = 50e6  # bytes/s a copy must at least sustain inside its scope before we give up


class ChunkReplicator:
    def __init__(self, gossip: GossipService, repo: Repository, copies: int = 2, scope: str = "cluster",
                 on_stored: Callable[[list[tuple[str, int]]], None] | None = None) -> None:
        if copies < 1 or scope not in ("cluster", "mesh"):
            raise InvalidRequest("copies is at least 1 and copies_scope is cluster or mesh")
        self.gossip = gossip
        self.repo = repo
        self.copies = copies
        self.scope = scope
        self.on_stored = on_stored
        gossip.register_stream_handler(KIND, self._serve)

    def candidates(self) -> tuple[list[MemberInfo], int]:
        """(alive store hosts other than us in scope, nearest first; how many store hosts exist there)."""
        me = self.gossip.id
        pool = [m for m in self.gossip.members() if m.id != me and m.role in STORE_ROLES
                and (self.scope == "mesh" or m.cluster == self.gossip.cluster)
                and m.state.value in ("alive", "suspect")]
        alive = [m for m in pool if m.state.value == "alive"]
        alive.sort(key=lambda m: (m.cluster != self.gossip.cluster, m.rtt if m.rtt is not None else 1.0, m.id))
        return alive, len(pool)

    async def ensure(self, refs: list[ChunkRef]) -> list[str]:
        """Put ``refs`` on ``copies - 1`` other hosts; return their ids. Raises Unavailable if it cannot."""
        if self.copies <= 1 or not refs:
            return []
        alive, known = self.candidates()
        wanted = min(self.copies - 1, known)
        if wanted == 0:
            return []
        size = sum(r.size for r in refs)
        timeout = BASE_TIMEOUT + size / ASSUMED_RATE
        body = {"hashes": [r.hash for r in refs], "sizes": [r.size for r in refs],
                "from": list(self.gossip.address or ()), "holder": self.gossip.id}
        done: list[str] = []
        failed: list[str] = []
        tried = 0
        while len(done) < wanted and tried < len(alive):
            batch = alive[tried: tried + wanted - len(done)]
            tried += len(batch)
            results = await asyncio.gather(*(self._ask(m, body, timeout) for m in batch), return_exceptions=True)
            for m, r in zip(batch, results, strict=True):
                (done if r is True else failed).append(m.id)
                if r is not True:
                    log.warning("copy to %s failed: %s", m.id[:12], r)
        if len(done) < wanted:
            raise Unavailable(f"{len(done) + 1} of {wanted + 1} copies of the chunks stored "
                              f"(failed or unreachable: {', '.join(x[:12] for x in failed) or 'no live store host'})")
        return done

    async def _ask(self, m: MemberInfo, body: dict[str, Any], timeout: float) -> bool:
        responder, reply = await self.gossip.request(m.gossip, KIND, body, timeout=timeout)
        return responder == m.id and isinstance(reply, dict) and reply.get("stored") == len(body["hashes"])

    async def _serve(self, request: StreamRequest) -> dict[str, Any]:
        body = request.body
        try:
            hashes = [str(h) for h in body["hashes"]]
            sizes = [int(s) for s in body["sizes"]]
            source = parse_addr(tuple(body["from"]))
            holder = str(body["holder"])
        except (KeyError, TypeError, ValueError, EltonError) as exc:
            raise ProtocolError("bad_message", "replicate request") from exc
        if holder != request.sender or len(hashes) != len(sizes):
            raise ProtocolError("bad_message", "replicate request from another host than the holder")
        # a cached copy asked for as a replica is one of the copies now: kept (and fsynced)
        await self.repo.cache.keep(hashes, self.repo.executor)
        missing = [(h, s) for h, s in zip(hashes, sizes, strict=True) if not self.repo.chunks.has(h)]
        encrypt = self._cluster_of(holder) != self.gossip.cluster
        stored: list[tuple[str, int]] = []
        for i in range(0, len(missing), MAX_HASHES_PER_REQUEST):
            part = missing[i: i + MAX_HASHES_PER_REQUEST]
            async for h, data in fetch_chunks(self.gossip, source, holder, [h for h, _ in part], encrypt=encrypt):
                if data is None or chunk_hash(data) != h:
                    raise Unavailable(f"chunk {h} did not arrive intact from {holder[:12]}")
                await self.repo._in_thread(self.repo.chunks.write, h, data)
                stored.append((h, len(data)))
        await self.repo._in_thread(self.repo.chunks.sync_dirs, {h for h, _ in stored})
        await self.repo.meta.write(record_chunks(sorted(set(stored))))
        if self.on_stored is not None and stored:
            self.on_stored(stored)
        return {"stored": len(hashes)}

    def _cluster_of(self, node: str) -> str | None:
        return next((m.cluster for m in self.gossip.members() if m.id == node), None)
