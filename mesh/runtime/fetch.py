"""The mesh ``Remote`` of a node: manifests and version lists from the key's home, chunks from the
cheapest holders (``repo.remote = MeshRemote(...)``).

Manifests (TCP kinds ``manifest`` and ``versions``, served by masters). A host asks the masters of
its own cluster first, then those of other clusters (nearest first). A master answers a versioned
lookup from what it holds (the issuer's cache of chosen manifests, its repository, its accepted
slots as a replica); otherwise, and always for the latest, it asks the key's home and then the
other masters of the key's replica set (``IssuerService.where``). Every manifest is checked
against its signature, its key and version, and its issuer's admission before it is used.

Chunks. ``fetch`` runs one ``FetchPlanner`` per read, with holders looked up at every cluster's
master (``HolderService.lookup``), costs from ``[costs]``, RTT from the membership probes (direct,
else Vivaldi coordinates gossiped with them: ``GossipService.rtt``) and
bandwidth learned from past transfers (one ``CostModel`` per host). Its effects are carried out
in order by one worker: requests to one holder decided together go out as one signed request for
up to ``MAX_BATCH`` chunks (a ``Transfer``, encrypted across clusters, at most ``max_parallel``
chunks in flight, each with the planner's deadline), carried by a transfer thread that receives,
decrypts and hashes the bytes off the event loop (the planner compares the digest), claims and
dones go to the cluster's coalescing master through a second, ordered worker, and each verified
chunk is written to the ChunkStore (no fsync: a torn cached copy fails its hash on read and is
fetched again), recorded in the metadata and reported as held. Up to ``MAX_STORES`` stores run at
once (their metadata records share a group commit) while requests go on; a chunk is handed to the
reader once its store is done, and a claim or done goes to the master only after the stores decided
before it, so a peer sent to us by the coalescer finds the chunk. (Stores used to be awaited one by
one in the effect worker: every request and delivery waited for the previous chunk's write and
fsynced record, which capped a read from a LAN holder at the disk's record latency.)
It is stored as a cached copy (``mesh.store.cache``):
least recently used copies are evicted to keep ``cache_quota``, and a chunk that does not fit is
delivered without being kept (this host then tells the coalescer it did not become a holder).
Only ``Deliver`` bytes reach the reader: a copy that fails its hash is never stored or delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from mesh.core.costs import CostModel, Host, PriceTable
from mesh.core.fetch import (
    BecameHolder,
    Cancel,
    ChunkError,
    ChunkOk,
    Deliver,
    Effect,
    FetchConfig,
    FetchFailed,
    FetchPlanner,
    HolderFault,
    InCluster,
    NeedHolders,
    Request,
    ToMaster,
    WanDone,
    WanGrant,
    WanWait,
)
from mesh.core.keys import validate_key
from mesh.core.manifest import ChunkRef, Manifest
from mesh.core.membership import MemberInfo
from mesh.errors import (
    ChunkMissing,
    EltonError,
    InvalidRequest,
    KeyNotFound,
    NotFound,
    ProtocolError,
    Unavailable,
    VersionNotFound,
)
from mesh.runtime.gossip import GossipService, StreamRequest
from mesh.runtime.holders import MASTER_ROLES, HolderService
from mesh.runtime.issuance import IssuerService
from mesh.runtime.metrics import FetchMetrics
from mesh.runtime.repository import Repository
from mesh.runtime.transfer import Transfer, carry

log = logging.getLogger("elton.fetch")

MANIFEST_KIND = "manifest"
VERSIONS_KIND = "versions"
MAX_VERSIONS = 1000
MAX_VERSIONS_BYTES = 8 << 20  # one versions reply stays well under the stream message limit
NET_ERRORS = (OSError, asyncio.IncompleteReadError, TimeoutError)
CLOSE_TIMEOUT = 10.0  # finishing the stores and dones of a read the reader left
MAX_STORES = 8  # fetched chunks being written to the cache at once (the store's thread pool is as wide)
MAX_BATCH = 8  # chunks asked of one holder in one signed request
READ_CONFIG = FetchConfig(max_parallel=16, max_ahead=32)  # deep enough that requests share a batch


class MeshRemote:
    """``Remote`` for a host of the mesh; also serves manifest lookups when the host is a master."""

    def __init__(self, gossip: GossipService, repo: Repository, holders: HolderService,
                 issuer: IssuerService | None = None, costs: Mapping[str, Any] | None = None,
                 config: FetchConfig | None = None, metrics: FetchMetrics | None = None,
                 request_timeout: float = 5.0) -> None:
        self.gossip = gossip
        self.repo = repo
        self.holders = holders
        self.issuer = issuer
        self.id = gossip.id
        self.local = Host(gossip.id, gossip.cluster)
        self.model = CostModel(PriceTable.from_config(costs), rtt=self._rtt)
        self.config = config or READ_CONFIG
        self.metrics = metrics or FetchMetrics()
        self.timeout = request_timeout
        self.is_master = gossip.role in MASTER_ROLES
        self.metrics.cache = repo.cache
        if repo.cache.on_removed is None:  # evicted copies leave the holder index
            repo.cache.on_removed = holders.on_chunks_removed
        if self.is_master:
            gossip.register_stream_handler(MANIFEST_KIND, self._on_manifest)
            gossip.register_stream_handler(VERSIONS_KIND, self._on_versions)

    def _rtt(self, a: str, b: str) -> float | None:
        """The cost model's RTT source: our direct probe RTT when we probed the holder, else the
        Vivaldi estimate (``GossipService.rtt``), so a holder we never probe still gets one."""
        return self.gossip.rtt(a, b)

    # -- manifests: the asking side -----------------------------------------------------------------

    def _masters_to_ask(self) -> list[MemberInfo]:
        own = [m for m in self.holders.masters(self.gossip.cluster) if m.id != self.id]
        other = [m for m in self.holders.masters() if m.cluster != self.gossip.cluster]
        other.sort(key=lambda m: (m.rtt_estimate if m.rtt_estimate is not None else 1e9, m.id))
        return own + other

    def _checked(self, blob: Any, key: str, version: int | None) -> Manifest:
        if not isinstance(blob, bytes):
            raise ProtocolError("bad_message", "manifest reply")
        manifest = Manifest.decode(blob).verify()
        if manifest.key != key or (version is not None and manifest.version != version):
            raise ProtocolError("bad_message", f"asked for {key}@{version}, got {manifest.key}@{manifest.version}")
        admission = self.gossip.admission
        if admission is None or admission.status(manifest.issuer) == "unadmitted":
            raise ProtocolError("unadmitted", f"manifest signed by {manifest.issuer[:12]}, not a member")
        if self.issuer is not None and self.is_master:
            self.issuer.learn(manifest)
        return manifest

    async def resolve(self, key: str, version: int | None) -> Manifest:
        validate_key(key)
        if self.is_master:
            return await self._find(key, version)
        body = {"k": key, "v": version, "f": True}
        errors: list[str] = []
        for m in self._masters_to_ask()[:4]:
            try:
                _, reply = await self.gossip.request(m.gossip, MANIFEST_KIND, body, self.timeout)
                return self._checked(reply.get("m") if isinstance(reply, dict) else None, key, version)
            except NotFound:
                raise
            except (*NET_ERRORS, EltonError) as exc:
                errors.append(f"{m.id[:12]}: {exc}")
        raise Unavailable(f"no master answered for {key!r}: {'; '.join(errors) or 'none is alive'}")

    async def versions(self, key: str, limit: int, before: int | None) -> list[Manifest]:
        validate_key(key)
        limit = max(1, min(int(limit), MAX_VERSIONS))
        if self.is_master:
            return await self._find_versions(key, limit, before)
        body = {"k": key, "n": limit, "b": before, "f": True}
        for m in self._masters_to_ask()[:4]:
            try:
                _, reply = await self.gossip.request(m.gossip, VERSIONS_KIND, body, self.timeout)
                return self._checked_list(reply, key)
            except NotFound:
                raise
            except (*NET_ERRORS, EltonError) as exc:
                log.debug("versions of %r at %s failed: %s", key, m.id[:12], exc)
        raise Unavailable(f"no master answered for the versions of {key!r}")

    def _checked_list(self, reply: Any, key: str) -> list[Manifest]:
        if not isinstance(reply, dict) or not isinstance(reply.get("ms"), list):
            raise ProtocolError("bad_message", "versions reply")
        return [self._checked(b, key, None) for b in reply["ms"][:MAX_VERSIONS]]

    # -- manifests: the master's side -----------------------------------------------------------------

    def _replica_list(self, key: str) -> list[tuple[str, MemberInfo | None]]:
        """The key's home, then its other live replicas (ids, with their member record)."""
        if self.issuer is None:
            return []
        where = self.issuer.where(key)
        ids = [where["home"]] if where.get("home") else []
        ids += [r["node_id"] for r in where["replicas"] if r.get("live")]
        return [(n, self.holders.member(n)) for n in dict.fromkeys(ids)]

    def _local(self, key: str, version: int) -> Manifest | None:
        found = self.issuer.cached(key, version) if self.issuer is not None else None
        found = found or self.repo.meta.manifest(key, version)
        if found is None and self.issuer is not None and self.is_master:
            for entry in self.issuer.store.accepted(key):
                if entry.version == version:
                    found = Manifest.decode(entry.manifest)
        return found

    def _latest_here(self, key: str) -> int:
        latest = self.repo.meta.latest_version(key)
        if self.issuer is not None:
            where = self.issuer.where(key)
            latest = max(latest, int(where.get("latest_known") or 0), int(where.get("top_accepted_here") or 0))
        return latest

    def _answer_here(self, key: str, version: int | None) -> Manifest:
        """As the key's home or replica: the version asked (the latest for None) or NotFound."""
        latest = self._latest_here(key)
        if latest == 0:
            raise KeyNotFound(key)
        wanted = latest if version is None else version
        found = self._local(key, wanted) if 0 < wanted <= latest else None
        if found is None:
            raise VersionNotFound(f"{key}@{wanted} (latest is {latest})")
        return found

    async def _find(self, key: str, version: int | None) -> Manifest:
        if version is not None:
            found = self._local(key, version)
            if found is not None:
                return found
        missing: NotFound | None = None
        errors: list[str] = []
        for node, member in self._replica_list(key):
            try:
                if node == self.id:
                    return self._answer_here(key, version)
                if member is None:
                    continue
                body = {"k": key, "v": version, "f": False}
                _, reply = await self.gossip.request(member.gossip, MANIFEST_KIND, body, self.timeout)
                return self._checked(reply.get("m") if isinstance(reply, dict) else None, key, version)
            except NotFound as exc:
                if version is None:
                    raise  # the home's word on the latest
                missing = missing or exc  # a lagging replica: ask the next
            except (*NET_ERRORS, EltonError) as exc:
                errors.append(f"{node[:12]}: {exc}")
        if missing is not None:
            raise missing
        raise Unavailable(f"no master of {key!r}'s replica set answered: {'; '.join(errors) or 'none is alive'}")

    async def _find_versions(self, key: str, limit: int, before: int | None) -> list[Manifest]:
        errors: list[str] = []
        for node, member in self._replica_list(key):
            try:
                if node == self.id:
                    return self._versions_here(key, limit, before)
                if member is None:
                    continue
                body = {"k": key, "n": limit, "b": before, "f": False}
                _, reply = await self.gossip.request(member.gossip, VERSIONS_KIND, body, self.timeout)
                return self._checked_list(reply, key)
            except NotFound:
                raise
            except (*NET_ERRORS, EltonError) as exc:
                errors.append(f"{node[:12]}: {exc}")
        raise Unavailable(f"no master of {key!r}'s replica set answered: {'; '.join(errors) or 'none is alive'}")

    def _versions_here(self, key: str, limit: int, before: int | None) -> list[Manifest]:
        found = {m.version: m for m in self.repo.meta.versions(key, limit, before)}
        if self.issuer is not None and self.is_master:
            for entry in self.issuer.store.accepted(key):
                if before is None or entry.version < before:
                    found.setdefault(entry.version, Manifest.decode(entry.manifest))
        if not found and self._latest_here(key) == 0:
            raise KeyNotFound(key)
        return [found[v] for v in sorted(found, reverse=True)[:limit]]

    def _parse(self, request: StreamRequest) -> tuple[str, bool]:
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("k"), str):
            raise InvalidRequest("a manifest lookup names a key")
        validate_key(body["k"])
        return body["k"], bool(body.get("f"))

    async def _on_manifest(self, request: StreamRequest) -> Any:
        key, forward = self._parse(request)
        version = request.body.get("v")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise InvalidRequest("a version is a positive integer")
        found = await self._find(key, version) if forward else self._answer_here(key, version)
        return {"m": found.encode()}

    async def _on_versions(self, request: StreamRequest) -> Any:
        key, forward = self._parse(request)
        limit, before = request.body.get("n"), request.body.get("b")
        if not isinstance(limit, int) or not 0 < limit <= MAX_VERSIONS:
            raise InvalidRequest(f"a limit is 1..{MAX_VERSIONS}")
        if before is not None and not isinstance(before, int):
            raise InvalidRequest("before is a version number")
        found = await self._find_versions(key, limit, before) if forward else self._versions_here(key, limit, before)
        blobs, size = [], 0
        for m in found:
            blob = m.encode()
            size += len(blob)
            if size > MAX_VERSIONS_BYTES:
                break
            blobs.append(blob)
        return {"ms": blobs}

    # -- chunks -------------------------------------------------------------------------------------------

    async def fetch(self, manifest: Manifest | None, refs: list[ChunkRef],
                    fallback: str | None = None) -> AsyncIterator[bytes]:
        # The version's author held every chunk when it committed: a candidate even before its
        # holder reports reach the masters (a read right after a commit elsewhere). ``fallback`` (a
        # host the caller says likely holds loose chunks) is a candidate only for chunks no master
        # knows a holder of: it may well not hold the others.
        read = _Read(self, refs, hint=manifest.author if manifest is not None else None, fallback=fallback)
        self.metrics.cache_misses += len(refs)
        ok = False
        try:
            await read.start()
            for i in range(len(refs)):
                item = await read.out.get()
                if isinstance(item, BaseException):
                    raise item
                ok = i == len(refs) - 1  # every chunk handed over: a reader may stop right after the last
                yield item
        finally:
            self.metrics.reads["ok" if ok else "failed"] += 1
            await read.close()


class _Read:
    """One ``fetch``: a FetchPlanner and the workers that carry out its effects."""

    def __init__(self, remote: MeshRemote, refs: list[ChunkRef], hint: str | None = None,
                 fallback: str | None = None) -> None:
        self.r = remote
        self.refs = refs
        self.hint = hint
        self.fallback = fallback
        self.hashes = {ref.hash for ref in refs}
        self.loop = asyncio.get_running_loop()
        self.planner: FetchPlanner | None = None
        self.out: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.effects: deque[Effect] = deque()
        self.wake = asyncio.Event()
        self.to_master: asyncio.Queue[Any] = asyncio.Queue()
        self.inflight: dict[int, _Batch] = {}  # request id -> the batch carrying it
        self.waiting: dict[str, list[Request]] = {}  # holder -> requests not sent yet (``_request``)
        self.drain_soon = False
        self.told: dict[str, set[str]] = {h: set() for h in self.hashes}
        self.need: set[str] = set()
        self.owed: set[str] = set()  # WAN grants not answered with a WanDone yet
        self.unstored: set[str] = set()
        self.stores: dict[str, asyncio.Task[None]] = {}  # chunk -> its store in progress
        self.handed: asyncio.Queue[tuple[Any, asyncio.Task[None] | None]] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.unsubscribe: list[Any] = []
        self.worker: asyncio.Task[None] | None = None
        self.link: asyncio.Task[None] | None = None
        self.handing: asyncio.Task[None] | None = None
        self.closed = False

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def start(self) -> None:
        self.r.metrics.lookups += 1
        known = await self.r.holders.lookup(sorted(self.hashes))
        author, fallback = self._candidate(self.hint), self._candidate(self.fallback)
        for hosts in known.values():
            if author is not None and all(x.node != author.node for x in hosts):
                hosts.append(author)
            if not hosts and fallback is not None:
                hosts.append(fallback)
        for h, hosts in known.items():
            self.told[h].update(x.node for x in hosts)
        self.planner = FetchPlanner(self.r.local, self.refs, self.r.model, self.loop.time(), self.r.config, known)
        self.unsubscribe = [self.r.holders.on_dead(self._dead), self.r.holders.on_notice(self._notice)]
        self.worker = self._spawn(self._work())
        self.link = self._spawn(self._master_link())
        self.handing = self._spawn(self._hand_over())
        self._drain()

    def _candidate(self, node: str | None) -> Host | None:
        """``node`` as a holder to try, if it is a live member other than this host."""
        member = self.r.holders.member(node) if node and node != self.r.id else None
        return Host(member.id, member.cluster) if member is not None and self.r.holders.alive(member.id) else None

    async def close(self) -> None:
        """Stop fetching; finish the stores and dones already decided (the reader may have read a stored
        chunk from disk and left before its ``WanDone`` went out), then give back unused WAN grants."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for unsubscribe in self.unsubscribe:
            with contextlib.suppress(ValueError):
                unsubscribe()
        for batch in set(self.inflight.values()):
            batch.task.cancel()
        self.effects = deque(e for e in self.effects
                             if isinstance(e, BecameHolder) or (isinstance(e, ToMaster) and isinstance(e.message, WanDone)))
        self.wake.set()
        self.to_master.put_nowait(None)
        if self.worker is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.worker, CLOSE_TIMEOUT)
        if self.stores:  # the chunks already verified are kept (and reported) even though the reader left
            await asyncio.wait(list(self.stores.values()), timeout=CLOSE_TIMEOUT)
        if self.link is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.link, CLOSE_TIMEOUT)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for chunk in sorted(self.owed):  # a grant we cannot use: let the next waiter pull it
            with contextlib.suppress(*NET_ERRORS, EltonError):
                await asyncio.wait_for(self.r.holders.to_master(WanDone(chunk, False)), self.r.timeout)

    # -- feeding the planner (always followed by _drain) -----------------------------------------------

    def _drain(self) -> None:
        if self.planner is None or self.closed:
            return
        effects = self.planner.drain()
        if effects:
            self.effects.extend(effects)
            self.wake.set()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadline = self.planner.next_deadline()
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.planner is not None and not self.closed:
            self.planner.handle_timer(self.loop.time())
            self._drain()

    def _dead(self, node: str) -> None:
        if self.planner is not None and not self.closed:
            self.r.model.bandwidth.forget(node)
            self.planner.holder_dead(node, self.loop.time())
            self._drain()

    def _notice(self, msg: WanGrant | WanWait | InCluster) -> None:
        if self.planner is None or msg.chunk not in self.hashes:
            return
        if self.closed:
            if isinstance(msg, WanGrant):
                self.owed.add(msg.chunk)  # given back in close()
            return
        if isinstance(msg, WanGrant):
            self.owed.add(msg.chunk)
        if isinstance(msg, InCluster):
            self.told[msg.chunk].update(msg.nodes)
        self.planner.receive(msg, self.loop.time())
        self._drain()

    # -- carrying out the effects, in order ----------------------------------------------------------

    async def _work(self) -> None:
        while True:
            if not self.effects:
                if self.closed:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            effect = self.effects.popleft()
            try:
                if isinstance(effect, Request):  # with the requests right behind it: batched per holder
                    batch = [effect]
                    while self.effects and isinstance(self.effects[0], Request):
                        batch.append(self.effects.popleft())  # type: ignore[arg-type]
                    self._request(batch)
                    continue
                await self._do(effect)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of ours: fail the read, never hang it
                log.exception("fetch effect %s failed", type(effect).__name__)
                self.handed.put_nowait((exc, None))

    async def _hand_over(self) -> None:
        """The reader's chunks (and a failure), in the planner's order, each once its store is done: a
        chunk delivered is on disk, so the next read on this host finds it there."""
        while True:
            item, store = await self.handed.get()
            if store is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(store)
            self.out.put_nowait(item)

    async def _do(self, e: Effect) -> None:
        if isinstance(e, Cancel):  # (requests are taken by _work, in batches)
            for node, queue in list(self.waiting.items()):  # not sent yet: dropped
                self.waiting[node] = [req for req in queue if req.request_id != e.request_id]
            batch = self.inflight.get(e.request_id)
            if batch is not None:
                self._landed(e.request_id, batch)
                if not any(self.inflight.get(req.request_id) is batch for req in batch.reqs):
                    batch.task.cancel()  # nothing of it is wanted any more
        elif isinstance(e, ToMaster):
            msg = e.message
            if isinstance(msg, WanDone):
                self.owed.discard(msg.chunk)
            # sent once the chunks stored before it are servable (a peer the master sends to us finds them)
            self.to_master.put_nowait((msg, list(self.stores.values())))
        elif isinstance(e, NeedHolders):
            if not self.need:
                self._spawn(self._lookup())
            self.need.add(e.chunk)
        elif isinstance(e, BecameHolder):
            # Stores run side by side (their metadata records share a commit): one at a time, each
            # chunk's write and record held up every request and delivery behind it.
            while sum(not t.done() for t in self.stores.values()) >= MAX_STORES:
                await asyncio.wait(list(self.stores.values()), return_when=asyncio.FIRST_COMPLETED)
            h = e.ref.hash
            if h not in self.stores:
                task = self.stores[h] = self._spawn(self._store(e))
                task.add_done_callback(lambda _t, h=h: self.stores.pop(h, None))
        elif isinstance(e, Deliver):
            self.handed.put_nowait((e.data, self.stores.get(e.ref.hash)))
        elif isinstance(e, HolderFault):
            self.r.metrics.faults[e.reason] += 1
            log.info("holder %s failed chunk %s: %s", e.holder.node[:12], e.chunk[:12], e.reason)
            if e.reason == "missing" and e.holder.cluster == self.r.local.cluster:
                self._spawn(self.r.holders.report_missing(e.holder.node, e.chunk))
        elif isinstance(e, FetchFailed):
            self.handed.put_nowait((ChunkMissing(f"chunk {e.ref.hash} (#{e.index}): {e.reason}"), None))

    async def _store(self, e: BecameHolder) -> None:
        repo = self.r.repo
        h, size = e.ref.hash, e.ref.size
        try:
            # a copy from a holder of this cluster skips the page cache (see ChunkStore.write); one
            # that crossed the WAN is the copy this cluster's other hosts will fetch next: buffered
            kept = await repo.cache.store_fetched(h, e.data, repo.executor, direct=not e.via_wan)
        except (EltonError, OSError) as exc:  # the reader still gets the bytes; we just do not hold them
            log.warning("keeping a fetched chunk failed: %s", exc)
            kept = False
        except Exception:  # a bug of ours: the bytes are verified, the reader still gets them
            log.exception("keeping a fetched chunk failed")
            kept = False
        if not kept:  # no room in the cache (or no disk): served through, not held here
            self.unstored.add(h)
            return
        self.r.holders.on_chunks_stored([(h, size)])

    def _request(self, reqs: list[Request]) -> None:
        """Requests to one holder go out together, up to ``MAX_BATCH`` chunks per signed request.

        While more than ``MAX_BATCH`` chunks are on their way from a holder, new requests to it wait
        (``waiting``) until a full batch gathers or the chunks in flight fall to ``MAX_BATCH``: the
        planner asks for one chunk per chunk delivered, which would otherwise make every request
        after the first ones a batch of one, and the holder keeps a batch's worth queued meanwhile."""
        self.r.metrics.requests += len(reqs)
        for req in reqs:
            self.waiting.setdefault(req.holder.node, []).append(req)
        for node in {req.holder.node for req in reqs}:
            self._send(node)

    def _send(self, node: str) -> None:
        queue = self.waiting.get(node)
        while queue and (len(queue) >= MAX_BATCH or self._flying(node) <= MAX_BATCH):
            batch = _Batch(queue[:MAX_BATCH])
            del queue[:MAX_BATCH]
            for req in batch.reqs:
                self.inflight[req.request_id] = batch
            batch.task = self._spawn(self._transfer(batch))
        if not queue:
            self.waiting.pop(node, None)

    async def _transfer(self, batch: _Batch) -> None:
        """Carried by a transfer thread: the bytes are received, decrypted and hashed there, and only
        each chunk's result comes back to the loop (``_arrived``)."""
        holder = batch.reqs[0].holder
        member = self.r.holders.member(holder.node)
        if member is None:
            for req in batch.reqs:
                self._arrived(req, None, None, "error")
            return
        transfer = Transfer(self.r.gossip, member.gossip, holder.node, [req.ref.hash for req in batch.reqs],
                            encrypt=holder.cluster != self.r.local.cluster)
        try:
            await carry(transfer, lambda i, _h, data, digest: self._arrived(batch.reqs[i], data, digest, "missing"))
        except (*NET_ERRORS, EltonError) as exc:
            log.debug("chunks from %s failed: %s", holder.node[:12], exc)
        for req in batch.reqs:  # what did not arrive (the chunks that did came before the end)
            self._arrived(req, None, None, "error")

    def _flying(self, node: str) -> int:
        """Chunks asked of ``node`` and not answered yet."""
        return sum(batch.reqs[0].holder.node == node for batch in self.inflight.values())

    def _landed(self, request_id: int, batch: _Batch) -> None:
        """A request of ``batch`` is answered or cancelled: one chunk less in flight from its holder."""
        del self.inflight[request_id]
        node = batch.reqs[0].holder.node
        if node in self.waiting and not self.closed:
            self._send(node)

    def _arrived(self, req: Request, data: bytes | None, digest: str | None, reason: str) -> None:
        batch = self.inflight.get(req.request_id)
        if batch is None:  # cancelled, or answered already
            return
        self._landed(req.request_id, batch)
        if data is None:
            result: ChunkOk | ChunkError = ChunkError(req.request_id, reason)
        else:
            result = ChunkOk(req.request_id, data, digest)
            holder = req.holder
            self.r.metrics.chunk_fetched(holder.node, holder.cluster, self.r.local.cluster, req.estimate.link.value,
                                         len(data), req.estimate.cost)
        if self.planner is not None and not self.closed:
            self.planner.receive(result, self.loop.time())
            if not self.drain_soon:  # chunks arriving together are answered with one drain (and batch)
                self.drain_soon = True
                self.loop.call_soon(self._drain_now)

    def _drain_now(self) -> None:
        self.drain_soon = False
        self._drain()

    async def _lookup(self) -> None:
        await asyncio.sleep(0.01)  # gather the NeedHolders of this burst into one lookup
        chunks, self.need = sorted(self.need), set()
        self.r.metrics.lookups += 1
        found = await self.r.holders.lookup(chunks)
        if self.planner is None or self.closed:
            return
        now = self.loop.time()
        for chunk in chunks:
            fresh = [h for h in found.get(chunk, []) if h.node not in self.told[chunk]]
            self.told[chunk].update(h.node for h in fresh)
            if fresh:
                self.planner.add_holders(chunk, fresh, now)
            else:
                self.planner.no_more_holders(chunk, now)
        self._drain()

    async def _master_link(self) -> None:
        """Claims and dones to the coalescing master, one at a time and in order."""
        while True:
            item = await self.to_master.get()
            if item is None:
                if self.closed:
                    return
                continue
            msg, after = item
            if self.closed and not isinstance(msg, WanDone):
                continue
            if after:
                await asyncio.wait(after)
            if isinstance(msg, WanDone) and msg.chunk in self.unstored:
                msg = WanDone(msg.chunk, False)
            try:
                replies = await self.r.holders.to_master(msg)
            except (*NET_ERRORS, EltonError) as exc:  # the planner bypasses a silent master after claim_timeout
                log.debug("coalescing master unreachable: %s", exc)
                continue
            for reply in replies:
                self._notice(reply)


class _Batch:
    """Requests carried by one transfer to one holder; those still in ``_Read.inflight`` wait for a result."""

    def __init__(self, reqs: list[Request]) -> None:
        self.reqs = reqs
        self.task: asyncio.Task[None] = None  # type: ignore[assignment]  # set right after
