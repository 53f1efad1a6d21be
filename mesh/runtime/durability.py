"""Chunk durability at commit: a version is issued only once its chunks are on ``copies`` holders.

The writer asks ``copies - 1`` other store hosts (role node or both) to pull the new chunks from
it over the transfer layer; each stores them durably (fsync, then its directory) before it answers.
``copies_scope`` picks where: the writer's cluster (no WAN cost at commit, survives a host) or the
whole mesh (survives a cluster, pays the WAN). When the scope holds fewer store hosts than
``copies``, every one of them is used (a single host keeps one copy); when enough exist but too few
answer, the commit fails with an error naming them, and nothing is issued.

Concurrent commits share their requests: while ``MAX_INFLIGHT_PER_PEER`` requests to one host are
in flight, the chunks of later commits wait and go to it together in the next request (one round
trip, one fsync of the directories and one metadata commit on that host for the whole batch); each
commit's answer is the answer of the request that carried its chunks.

A host that answered that it stores chunks keeps them for good (a copy is never evicted, only a
cached one), so the writer remembers the last ``MAX_CONFIRMED`` (host, chunk) pairs confirmed, and
a commit whose chunks a live candidate already confirmed counts that host without asking it again
(content written again: the same file under another key, an unchanged part of a tree).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.core.manifest import ChunkRef
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
RETRY_WINDOW = 3.0  # seconds a commit keeps trying to place its copies (a host may be leaving)
RETRY_PAUSE = 0.25
MAX_INFLIGHT_PER_PEER = 2  # copy requests in flight to one host; later commits' chunks share the next
MAX_BATCH_HASHES = 4096  # chunks in one shared request
MAX_CONFIRMED = 32768  # (host, chunk) pairs remembered as stored there (about 8 MB)


@dataclass
class _Peer:
    """Copy requests waiting for one host: (hashes, sizes, timeout, answer) each, and those in flight."""

    waiting: list[tuple[list[str], list[int], float, asyncio.Future[bool]]] = field(default_factory=list)
    inflight: int = 0


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
        self._peers: dict[str, _Peer] = {}
        self._confirmed: OrderedDict[tuple[str, str], None] = OrderedDict()  # (host, chunk) it stores, LRU
        self._tasks: set[asyncio.Task[None]] = set()
        gossip.register_stream_handler(KIND, self._serve)

    def candidates(self) -> tuple[list[MemberInfo], int]:
        """(alive store hosts other than us in scope, nearest first; how many store hosts exist there).

        Nearest by ``rtt_estimate``: the direct probes' RTT, else the Vivaldi distance, so a host
        this one never probed is not ranked as if its RTT were unknown."""
        me = self.gossip.id
        pool = [m for m in self.gossip.members() if m.id != me and m.role in STORE_ROLES
                and (self.scope == "mesh" or m.cluster == self.gossip.cluster)
                and m.state.value in ("alive", "suspect")]
        alive = [m for m in pool if m.state.value == "alive"]
        alive.sort(key=lambda m: (m.cluster != self.gossip.cluster,
                                  m.rtt_estimate if m.rtt_estimate is not None else 1.0, m.id))
        return alive, len(pool)

    async def ensure(self, refs: list[ChunkRef]) -> list[str]:
        """Put ``refs`` on ``copies - 1`` other hosts; return their ids. Raises Unavailable if it cannot.

        A host that fails is tried again, and the candidates re-read, for up to ``RETRY_WINDOW``: a host
        that leaves gracefully refuses copies for the moment before the mesh hears it left (then it no
        longer counts, and a cluster left with one store host keeps one copy)."""
        if self.copies <= 1 or not refs:
            return []
        size = sum(r.size for r in refs)
        timeout = BASE_TIMEOUT + size / ASSUMED_RATE
        hashes, sizes = [r.hash for r in refs], [r.size for r in refs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_WINDOW
        done: list[str] = []
        failed: list[str] = []
        while True:
            alive, known = self.candidates()
            wanted = min(self.copies - 1, known)
            for m in alive:  # hosts that confirmed all these chunks before count without a request
                if len(done) < wanted and m.id not in done and self._holds(m.id, hashes):
                    done.append(m.id)
            if len(done) >= wanted:
                return done
            untried = [m for m in alive if m.id not in done and m.id not in failed]
            again = [m for m in alive if m.id in failed]
            batch = (untried + again)[: wanted - len(done)]
            if batch and (untried or loop.time() < deadline):
                results = await asyncio.gather(*(self._ask(m, hashes, sizes, timeout) for m in batch),
                                               return_exceptions=True)
                for m, r in zip(batch, results, strict=True):
                    if r is True:
                        done.append(m.id)
                        self._confirm(m.id, hashes)
                    else:
                        if m.id not in failed:
                            failed.append(m.id)
                        log.warning("copy to %s failed: %s", m.id[:12], r)
                if len(done) >= wanted or untried:
                    continue
            if loop.time() >= deadline:
                missing = [x for x in failed if x not in done]
                raise Unavailable(f"{len(done) + 1} of {wanted + 1} copies of the chunks stored (failed or "
                                  f"unreachable: {', '.join(x[:12] for x in missing) or 'no live store host'})")
            await asyncio.sleep(RETRY_PAUSE)

    def _holds(self, node: str, hashes: list[str]) -> bool:
        """Whether ``node`` confirmed that it stores every one of ``hashes`` (touched as used if so)."""
        if len(hashes) > MAX_CONFIRMED or not all((node, h) in self._confirmed for h in hashes):
            return False
        for h in hashes:
            self._confirmed.move_to_end((node, h))
        return True

    def _confirm(self, node: str, hashes: list[str]) -> None:
        for h in hashes:
            self._confirmed[(node, h)] = None
            self._confirmed.move_to_end((node, h))
        while len(self._confirmed) > MAX_CONFIRMED:
            self._confirmed.popitem(last=False)

    async def _ask(self, m: MemberInfo, hashes: list[str], sizes: list[int], timeout: float) -> bool:
        """Whether ``m`` stored the chunks durably: sent at once, or with others' in the next request.

        A commit with more than ``MAX_BATCH_HASHES`` chunks (an eltonfs tree of thousands of new
        files) is cut into requests of at most that many, so no message grows with the commit."""
        peer = self._peers.setdefault(m.id, _Peer())
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[bool]] = []
        for i in range(0, len(hashes), MAX_BATCH_HASHES):
            answer: asyncio.Future[bool] = loop.create_future()
            peer.waiting.append((hashes[i: i + MAX_BATCH_HASHES], sizes[i: i + MAX_BATCH_HASHES], timeout, answer))
            answers.append(answer)
            if peer.inflight < MAX_INFLIGHT_PER_PEER:
                peer.inflight += 1
                task = asyncio.ensure_future(self._send_batches(m, peer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        try:
            results = await asyncio.gather(*answers)
        finally:
            for answer in answers:  # a part that failed fails the commit: the others are not waited for
                answer.cancel()
        return all(results)

    async def _send_batches(self, m: MemberInfo, peer: _Peer) -> None:
        try:
            while peer.waiting:
                batch, hashes, sizes, seen = [], [], [], set()
                while peer.waiting and (not batch or len(hashes) + len(peer.waiting[0][0]) <= MAX_BATCH_HASHES):
                    item = peer.waiting.pop(0)
                    if item[3].done():  # its commit already failed or was cancelled
                        continue
                    batch.append(item)
                    for h, s in zip(item[0], item[1], strict=True):
                        if h not in seen:
                            seen.add(h)
                            hashes.append(h)
                            sizes.append(s)
                if not batch:
                    continue
                body = {"hashes": hashes, "sizes": sizes, "from": list(self.gossip.address or ()),
                        "holder": self.gossip.id}
                try:
                    responder, reply = await self.gossip.request(m.gossip, KIND, body,
                                                                 timeout=max(t for _, _, t, _ in batch))
                    ok: bool | BaseException = (responder == m.id and isinstance(reply, dict)
                                                and reply.get("stored") == len(hashes))
                except Exception as exc:  # each waiting commit sees it (and logs it)
                    ok = exc
                for _, _, _, answer in batch:
                    if answer.done():  # its commit was cancelled
                        continue
                    if isinstance(ok, BaseException):
                        answer.set_exception(ok)
                    else:
                        answer.set_result(ok)
        finally:
            peer.inflight -= 1
            if peer.inflight == 0 and not peer.waiting:
                self._peers.pop(m.id, None)

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
                if data is None:  # missing there, or not these bytes
                    raise Unavailable(f"chunk {h} did not arrive intact from {holder[:12]}")
                await self.repo._in_thread(self.repo.chunks.write, h, data)
                stored.append((h, len(data)))
        # A chunk found here may have been named by another request whose fsync has not ended:
        # every directory with a new name not yet covered by an fsync is synced (none, usually).
        if self.repo.chunks.dirs_to_sync(hashes):
            await self.repo._in_thread(self.repo.chunks.sync_dirs, hashes)
        if stored:  # nothing new: nothing to record
            await self.repo.meta.write(record_chunks(sorted(set(stored))))
            if self.on_stored is not None:
                self.on_stored(stored)
        return {"stored": len(hashes)}

    def _cluster_of(self, node: str) -> str | None:
        return next((m.cluster for m in self.gossip.members() if m.id == node), None)
