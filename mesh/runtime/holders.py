"""Who holds which chunk, over the gossip port: the runtime of ``mesh.core.holders`` and WAN coalescing.

Every host runs a ``HolderService``. Its ``HolderReporter`` tells every live master of its cluster
what the host's ChunkStore holds (a full report on start, deltas as ``on_chunks_stored`` /
``on_chunks_removed`` are called, heartbeats), TCP kind ``holders.report``; a master that saw a
gap answers ``{"full": true}`` and the next report is a full one.

On a master it also keeps the cluster's ``HolderIndex`` and ``WanCoalescer`` and serves:

- ``holders.who``   WhoHolds -> Holders (nodes of this cluster holding each chunk), for any admitted host;
- ``holders.drop``  a node of this cluster found a chunk missing at a holder (``HolderIndex.drop``);
- ``wan``           WanClaim / WanDone from a node of this cluster; the coalescer's answers for the
                    sender ride in the reply, those for other nodes go out as ``wan.notice``.

The coalescing master of a cluster is its live master with the lowest id, so every node of the
cluster claims at the same one. Membership is polled: a host the failure detector marks dead (or
that left) is forgotten by the index and the coalescer at once, and ``on_dead`` listeners (the
fetches in progress) are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from mesh.core.costs import Host
from mesh.core.fetch import InCluster, WanClaim, WanCoalescer, WanDone, WanGrant, WanWait, message_from_wire
from mesh.core.holders import MAX_QUERY_CHUNKS, HolderIndex, HolderReport, HolderReporter, Holders, WhoHolds
from mesh.core.holders import is_chunk_hash as _is_hash
from mesh.core.membership import MemberInfo, MemberState
from mesh.errors import EltonError, ProtocolError, Unavailable
from mesh.runtime.gossip import GossipService, StreamRequest
from mesh.store.meta import MetaStore

log = logging.getLogger("elton.holders")

MASTER_ROLES = ("master", "both")
LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
REQUEST_TIMEOUT = 5.0
CoalesceReply = WanGrant | WanWait | InCluster
NoticeHandler = Callable[[CoalesceReply], None]


def held_chunks(meta: MetaStore) -> list[str]:
    """The chunks a node's metadata records as held (what its first full report says)."""
    return [row[0] for row in meta.reader.execute("SELECT hash FROM chunks")]


class HolderService:
    """Holder reporting (every host), the cluster's index and WAN coalescer (masters), holder lookups."""

    def __init__(self, gossip: GossipService, chunks: Iterable[str] = (), *, ttl: float = 30.0,
                 lease: float = 120.0, poll_interval: float = 0.1, delta_interval: float = 0.2,
                 heartbeat: float = 5.0) -> None:
        self.gossip = gossip
        self.id = gossip.id
        self.cluster = gossip.cluster
        self.is_master = gossip.role in MASTER_ROLES
        self.poll_interval = poll_interval
        # the epoch must grow across restarts (a new epoch starts with a full report): wall-clock ms
        self.reporter = HolderReporter(epoch=int(time.time() * 1000), chunks=chunks, now=self.now(),
                                       delta_interval=delta_interval, heartbeat=heartbeat)
        self.index = HolderIndex(ttl=ttl) if self.is_master else None
        self.coalescer = WanCoalescer(self.index, lease=lease) if self.is_master else None
        self.counters: dict[str, int] = {}
        self._members: dict[str, MemberInfo] = {}
        self._gone: set[str] = set()
        self._dead_listeners: list[Callable[[str], None]] = []
        self._notice_listeners: list[NoticeHandler] = []
        self._report_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        gossip.register_stream_handler("wan.notice", self._on_notice)
        if self.is_master:
            gossip.register_stream_handler("holders.report", self._on_report)
            gossip.register_stream_handler("holders.who", self._on_who)
            gossip.register_stream_handler("holders.drop", self._on_drop)
            gossip.register_stream_handler("wan", self._on_wan)

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.refresh()
        self._loop_task = asyncio.create_task(self._run())

    async def close(self) -> None:
        # Python 3.11's wait_for can lose a cancel that lands as its inner call completes (a report
        # answered just then): the loop also stops at its next tick, so close never waits forever.
        self._closed = True
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def now(self) -> float:
        """The clock the holder cores run on (monotonic; the HTTP API reads the index with it)."""
        return time.monotonic()

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while not self._closed:
            try:
                self.refresh()
                await self._send_reports()
                self._master_timers()
            except Exception:  # a bug of ours must not stop holder tracking
                log.exception("holder service tick failed")
                self._count("internal_error")
            await asyncio.sleep(self.poll_interval)

    # -- membership ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read membership: forget hosts that died or left, keep the index's leases of live ones."""
        members = self.gossip.members()
        self._members = {m.id: m for m in members}
        now = self.now()
        gone = {m.id for m in members if m.state not in LIVE}
        for node in gone - self._gone:
            self.forget(node)
        self._gone = gone
        if self.index is not None:
            for m in members:
                if m.state in LIVE and m.cluster == self.cluster:
                    self.index.touch(m.id, now)

    def forget(self, node: str) -> None:
        if self.index is not None and self.coalescer is not None:
            self.index.forget(node)
            self.coalescer.forget(node, self.now())
            self._flush_coalescer()
        for listener in list(self._dead_listeners):
            listener(node)

    def on_dead(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(node)`` when the failure detector marks a host dead; returns an unsubscribe."""
        self._dead_listeners.append(listener)
        return lambda: self._dead_listeners.remove(listener)

    def on_notice(self, listener: NoticeHandler) -> Callable[[], None]:
        """Call ``listener(msg)`` for each coalescer message (grant, wait, in-cluster) sent to this host."""
        self._notice_listeners.append(listener)
        return lambda: self._notice_listeners.remove(listener)

    def member(self, node: str) -> MemberInfo | None:
        return self._members.get(node)

    def alive(self, node: str) -> bool:
        if node == self.id:
            return True
        m = self._members.get(node)
        return m is not None and m.state in LIVE

    def masters(self, cluster: str | None = None) -> list[MemberInfo]:
        """Live masters of ``cluster`` (all clusters for None), lowest id first."""
        ms = [m for m in self._members.values() if m.role in MASTER_ROLES and m.state in LIVE
              and (cluster is None or m.cluster == cluster)]
        return sorted(ms, key=lambda m: m.id)

    def own_masters(self) -> list[str]:
        ids = {m.id for m in self.masters(self.cluster)}
        if self.is_master:
            ids.add(self.id)
        return sorted(ids)

    def coalescing_master(self) -> str | None:
        own = self.own_masters()
        return own[0] if own else None

    # -- reporting (every host) ---------------------------------------------------------------------

    def on_chunks_stored(self, pairs: Iterable[tuple[str, int]]) -> None:
        """The store kept these chunks (an upload, a fetched copy): they are reported in the next delta."""
        for h, _size in pairs:
            self.reporter.added(h)

    def on_chunks_removed(self, hashes: Iterable[str]) -> None:
        """The store evicted these chunks."""
        for h in hashes:
            self.reporter.removed(h)

    async def _send_reports(self) -> None:
        async with self._report_lock:
            self.reporter.handle_timer(self.now())
            reports = self.reporter.drain()
            if not reports:
                return
            for master in self.own_masters():
                for report in reports:
                    if not await self._report_to(master, report):
                        break  # the master sees the gap and asks for a full report

    async def _report_to(self, master: str, report: HolderReport) -> bool:
        if master == self.id:
            self._receive_report(self.id, report)
            return True
        m = self._members.get(master)
        if m is None:
            return False
        try:
            _, reply = await self.gossip.request(m.gossip, "holders.report", report.to_wire(), REQUEST_TIMEOUT)
        except (OSError, EltonError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._count("report_failed")
            log.debug("holder report to %s failed: %s", master[:12], exc)
            return False
        if isinstance(reply, dict) and reply.get("full"):
            self.reporter.request_full()
        return True

    # -- the master's side ----------------------------------------------------------------------------

    def _own_node(self, request: StreamRequest) -> None:
        m = self._members.get(request.sender)
        if request.sender != self.id and (m is None or m.cluster != self.cluster):
            raise ProtocolError("foreign_cluster", "holder records come from this cluster only")

    def _receive_report(self, node: str, report: HolderReport) -> bool:
        assert self.index is not None
        self.index.receive(node, report, self.now())
        wants_full = False
        for ask in self.index.drain():
            if ask.dest == self.id:
                self.reporter.request_full()
            elif ask.dest == node:
                wants_full = True
        return wants_full

    async def _on_report(self, request: StreamRequest) -> Any:
        self._own_node(request)
        report = HolderReport.from_wire(request.body)
        return {"full": self._receive_report(request.sender, report)}

    async def _on_who(self, request: StreamRequest) -> Any:
        assert self.index is not None
        query = WhoHolds.from_wire(request.body)
        return self.index.answer(query, self.cluster, self.now()).to_wire()

    async def _on_drop(self, request: StreamRequest) -> Any:
        assert self.index is not None
        self._own_node(request)
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("n"), str) or not _is_hash(body.get("c")):
            raise ProtocolError("malformed_holders", "drop")
        self.index.drop(body["n"], body["c"])
        return {"ok": True}

    async def _on_wan(self, request: StreamRequest) -> Any:
        self._own_node(request)
        msg = message_from_wire(request.body)
        if not isinstance(msg, WanClaim | WanDone):
            raise ProtocolError("malformed_fetch", "not for a master")
        return {"ms": [m.to_wire() for m in self._coalesce(request.sender, msg)]}

    def _coalesce(self, node: str, msg: WanClaim | WanDone) -> list[CoalesceReply]:
        """Feed the coalescer; return its messages for ``node`` and send the others as notices."""
        assert self.coalescer is not None
        self.coalescer.receive(node, msg, self.now())
        return self._flush_coalescer(keep_for=node)

    def _flush_coalescer(self, keep_for: str | None = None) -> list[CoalesceReply]:
        assert self.coalescer is not None
        mine: list[CoalesceReply] = []
        for send in self.coalescer.drain():
            if send.dest == keep_for:
                mine.append(send.message)  # type: ignore[arg-type]
            else:
                self._spawn(self._notify(send.dest, send.message))  # type: ignore[arg-type]
        return mine

    async def _notify(self, node: str, msg: CoalesceReply) -> None:
        if node == self.id:
            self._dispatch(msg)
            return
        m = self._members.get(node)
        if m is None:
            return
        try:
            await self.gossip.request(m.gossip, "wan.notice", msg.to_wire(), REQUEST_TIMEOUT)
        except (OSError, EltonError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._count("notice_failed")  # the node claims again after its wait
            log.debug("wan notice to %s failed: %s", node[:12], exc)

    def _master_timers(self) -> None:
        if self.index is None or self.coalescer is None:
            return
        now = self.now()
        self.index.handle_timer(now)
        self.index.drain()  # full-report requests only come as report replies
        deadline = self.coalescer.next_deadline()
        if deadline is not None and deadline <= now:
            self.coalescer.handle_timer(now)
            self._flush_coalescer()

    # -- the node's side ----------------------------------------------------------------------------

    async def _on_notice(self, request: StreamRequest) -> Any:
        if request.sender != self.coalescing_master():
            raise ProtocolError("not_master", "wan notice from a host that does not coalesce for us")
        msg = message_from_wire(request.body)
        if not isinstance(msg, WanGrant | WanWait | InCluster):
            raise ProtocolError("malformed_fetch", "not for a node")
        self._dispatch(msg)
        return {"ok": True}

    def _dispatch(self, msg: CoalesceReply) -> None:
        for listener in list(self._notice_listeners):
            listener(msg)

    async def to_master(self, msg: WanClaim | WanDone) -> list[CoalesceReply]:
        """Send a claim or a done to the cluster's coalescing master; its answers for us (maybe none)."""
        master = self.coalescing_master()
        if master is None:
            raise Unavailable("no master of this cluster is alive")
        if master == self.id:
            return self._coalesce(self.id, msg)
        m = self._members[master]
        _, reply = await self.gossip.request(m.gossip, "wan", msg.to_wire(), REQUEST_TIMEOUT)
        if not isinstance(reply, dict) or not isinstance(reply.get("ms"), list):
            raise ProtocolError("malformed_fetch", "wan reply")
        out = [message_from_wire(x) for x in reply["ms"][:64]]
        return [x for x in out if isinstance(x, WanGrant | WanWait | InCluster)]

    async def report_missing(self, holder: str, chunk: str) -> None:
        """A holder of this cluster did not have ``chunk``: let the masters drop that record."""
        for master in self.own_masters():
            if master == self.id and self.index is not None:
                self.index.drop(holder, chunk)
                continue
            m = self._members.get(master)
            if m is not None:
                with contextlib.suppress(OSError, EltonError, asyncio.IncompleteReadError, TimeoutError):
                    await self.gossip.request(m.gossip, "holders.drop", {"n": holder, "c": chunk}, REQUEST_TIMEOUT)

    async def lookup(self, chunks: list[str], *, other_clusters: bool = True) -> dict[str, list[Host]]:
        """Live holders of ``chunks`` (not this host): from this cluster's master, and from one master
        of every other cluster unless ``other_clusters`` is False."""
        found: dict[str, list[Host]] = {c: [] for c in chunks}
        clusters = sorted({m.cluster for m in self.masters()} | {self.cluster})
        if not other_clusters:
            clusters = [self.cluster]
        results = await asyncio.gather(*(self._lookup_cluster(c, chunks) for c in clusters))
        for cluster, entries in zip(clusters, results, strict=True):
            for chunk, nodes in entries.items():
                found[chunk].extend(Host(n, cluster) for n in nodes
                                    if n != self.id and self.alive(n) and n in self._members)
        return found

    async def last_copies(self, chunks: list[str]) -> set[str]:
        """Which of ``chunks`` no other live host of the mesh is known to hold (the cache keeps those):
        a cluster whose masters do not answer counts as holding nothing."""
        found = await self.lookup(chunks)
        return {c for c in chunks if not found.get(c)}

    async def _lookup_cluster(self, cluster: str, chunks: list[str]) -> dict[str, tuple[str, ...]]:
        masters = self.masters(cluster)
        if cluster == self.cluster and self.index is not None:
            return {c: tuple(self.index.holders(c, self.now())) for c in chunks}
        masters.sort(key=lambda m: (m.rtt_estimate if m.rtt_estimate is not None else 1e9, m.id))
        for m in masters[:3]:
            out: dict[str, tuple[str, ...]] = {}
            try:
                for i in range(0, len(chunks), MAX_QUERY_CHUNKS):
                    query = WhoHolds(tuple(chunks[i:i + MAX_QUERY_CHUNKS]))
                    _, reply = await self.gossip.request(m.gossip, "holders.who", query.to_wire(), REQUEST_TIMEOUT)
                    answer = Holders.from_wire(reply)
                    if answer.cluster != m.cluster:
                        raise ProtocolError("malformed_holders", "answer for another cluster")
                    out.update(answer.entries)
                return out
            except (OSError, EltonError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self._count("lookup_failed")
                log.debug("holder lookup at %s failed: %s", m.id[:12], exc)
        return {}

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counters": dict(self.counters), "coalescing_master": self.coalescing_master()}
        if self.index is not None and self.coalescer is not None:
            out.update({"tracked_nodes": len(self.index.nodes()), "wan_grants": self.coalescer.granted,
                        "ignored_reports": self.index.ignored})
        return out

