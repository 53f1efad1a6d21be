"""The fetch planner: one reader's fetch of a file's chunks from the cheapest holders (sans-IO).

For each distinct chunk (in file order, at most ``max_ahead`` chunks ahead of the reader) it
ranks the live holders it knows and has not yet seen fail for that chunk (only those of the
own cluster once the master said the cluster has it, while one is left) by expected cost
(``CostModel.estimate``, counting bytes already in flight to the same holder, ties broken by
node id), and asks the cheapest. The ranking is redone for every request, so what the cost
model learned from the last transfer (bandwidth) and holders added since are used at once.

- The best holder is in the own cluster: request it.
- The best holder is in another cluster: first claim the chunk at the cluster's master
  (``WanClaim``), which makes concurrent misses in one cluster one WAN transfer: on
  ``WanGrant`` the planner re-ranks and pulls it; on ``WanWait`` it waits for ``InCluster``
  (then fetches from the cluster peer that pulled it) and claims again after ``claim_wait``.
  A master that does not answer within ``claim_timeout`` is bypassed (no coalescing).
- ``ChunkOk`` is verified (size and BLAKE3) before anything else; a mismatch, an error or a
  timeout marks that holder failed for that chunk and the next one is asked. When no candidate
  is left the planner asks the runtime for more (``NeedHolders``), up to ``max_lookups`` rounds
  spaced by a growing back-off (holder reports reach the masters a moment after a write).
- Verified chunks are stored first (``BecameHolder``; after a WAN pull, ``WanDone`` then tells
  the master so waiting peers come to us) and handed to the reader in file order (``Deliver``).

Bounds: ``max_parallel`` requests in flight, ``max_ahead`` chunks between the reader and the
furthest chunk fetched (the reorder buffer), ``max_holders`` candidates per chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mesh.core.costs import CostModel, Estimate, Host
from mesh.core.fetch.messages import (
    MAX_TRIED,
    BecameHolder,
    Cancel,
    ChunkError,
    ChunkOk,
    Deliver,
    Effect,
    FetchFailed,
    HolderFault,
    InCluster,
    NeedHolders,
    Request,
    ToMaster,
    WanClaim,
    WanDone,
    WanGrant,
    WanWait,
)
from mesh.core.manifest import ChunkRef, chunk_hash


@dataclass(frozen=True)
class FetchConfig:
    max_parallel: int = 4  # requests in flight
    max_ahead: int = 16  # chunks fetched ahead of the next one delivered
    timeout_base: float = 5.0  # a request's deadline: now + timeout_base + size / min_bandwidth
    min_bandwidth: float = 1.0e6  # bytes per second below which a transfer is given up
    claim_timeout: float = 5.0  # no answer from the master to a WanClaim: fetch anyway
    claim_wait: float = 30.0  # waiting for a peer's WAN pull: claim again after this
    lookup_timeout: float = 10.0  # no answer to NeedHolders
    max_lookups: int = 5  # NeedHolders rounds that bring nothing new before the chunk fails
    lookup_backoff: float = 0.25  # wait before the next round, doubled each round (0.25+0.5+1+2 s)
    max_holders: int = 64  # candidates remembered per chunk
    coalesce: bool = True  # claim at the master before a WAN transfer

    def __post_init__(self) -> None:
        if self.max_parallel < 1 or self.max_ahead < 1 or self.max_holders < 1 or self.min_bandwidth <= 0:
            raise ValueError("fetch limits must be positive")


IDLE, CLAIMING, WAITING, LOOKUP, INFLIGHT, DONE, FAILED = (
    "idle", "claiming", "waiting", "lookup", "inflight", "done", "failed")


@dataclass
class _Unit:
    """One distinct chunk of the file (a chunk may occur at several indexes)."""

    ref: ChunkRef
    indexes: list[int]
    holders: dict[str, Host] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)
    state: str = IDLE
    deadline: float | None = None
    granted: bool = False  # may cross the WAN (the master granted it, or coalescing is off/bypassed)
    claimed: bool = False  # we hold the master's grant: WanDone is owed
    wan_requests: int = 0
    lookups: int = 0
    cluster_has: bool = False  # the master said the own cluster holds it: no WAN while a copy here is untried
    data: bytes | None = None
    undelivered: int = 0


@dataclass
class _InFlight:
    unit: _Unit
    estimate: Estimate
    sent: float
    deadline: float


class FetchPlanner:
    """Fetch ``chunks`` for a reader on ``local``; see the module docstring and ``mesh.core.fetch``."""

    def __init__(self, local: Host, chunks: Sequence[ChunkRef], costs: CostModel, now: float,
                 config: FetchConfig | None = None, holders: Mapping[str, Iterable[Host]] | None = None) -> None:
        self.local = local
        self.costs = costs
        self.config = config or FetchConfig()
        self._units: dict[str, _Unit] = {}
        self._by_index: list[_Unit] = []
        for i, ref in enumerate(chunks):
            unit = self._units.get(ref.hash)
            if unit is None:
                unit = self._units[ref.hash] = _Unit(ref, [])
            unit.indexes.append(i)
            unit.undelivered += 1
            self._by_index.append(unit)
        self._order = list(self._units.values())  # by first index
        self._cursor = 0  # first unit of _order that may still need work
        self._next = 0  # next index to deliver
        self._inflight: dict[int, _InFlight] = {}
        self._queued: dict[str, int] = {}  # bytes in flight per holder node
        self._dead: set[str] = set()
        self._next_id = 1
        self._out: list[Effect] = []
        self.failed = False
        self.stale_results = 0
        for chunk, hosts in (holders or {}).items():
            unit = self._units.get(chunk)
            if unit is not None:
                for h in list(hosts)[: self.config.max_holders]:
                    unit.holders[h.node] = h
        self._pump(now)

    # --- inputs ---

    @property
    def done(self) -> bool:
        return self._next == len(self._by_index)

    @property
    def finished(self) -> bool:
        return self.done or self.failed

    def add_holders(self, chunk: str, holders: Iterable[Host], now: float) -> None:
        """Known holders of ``chunk`` (own cluster from the master, other clusters via the home)."""
        unit = self._units.get(chunk)
        if unit is None:
            return
        fresh = False
        for h in holders:
            if h.node not in unit.holders and len(unit.holders) < self.config.max_holders:
                unit.holders[h.node] = h
                fresh = fresh or (h.node not in unit.tried and h.node not in self._dead)
        if fresh:
            unit.lookups = 0
            if unit.state in (LOOKUP, CLAIMING, WAITING):
                self._idle(unit)
        self._pump(now)

    def no_more_holders(self, chunk: str, now: float) -> None:
        """The lookup for ``chunk`` found nothing new. Holder reports reach the masters a moment
        after a write (a read right after a commit elsewhere), so the next round waits a little,
        longer each time; after ``max_lookups`` rounds the chunk fails."""
        unit = self._units.get(chunk)
        if unit is not None and unit.state == LOOKUP:
            if unit.lookups >= self.config.max_lookups:
                self._fail(unit, "no_holder")
            else:  # stays in LOOKUP until the deadline; then _start asks again
                unit.deadline = now + self.config.lookup_backoff * 2 ** (unit.lookups - 1)
        self._pump(now)

    def holder_dead(self, node: str, now: float) -> None:
        """The failure detector declared ``node`` dead: never ask it again; abandon its requests."""
        self._dead.add(node)
        for rid, f in list(self._inflight.items()):
            if f.estimate.holder.node == node:
                self._abandon(rid, "dead")
        self._pump(now)

    def receive(self, msg: ChunkOk | ChunkError | WanGrant | WanWait | InCluster, now: float) -> None:
        if isinstance(msg, ChunkOk | ChunkError):
            self._result(msg, now)
        elif isinstance(msg, WanGrant):
            self._grant(msg.chunk)
        elif isinstance(msg, WanWait):
            unit = self._units.get(msg.chunk)
            if unit is not None and unit.state == CLAIMING:
                unit.state, unit.deadline = WAITING, now + self.config.claim_wait
        elif isinstance(msg, InCluster):
            hosts = [Host(n, self.local.cluster) for n in msg.nodes]
            unit = self._units.get(msg.chunk)
            if unit is not None:
                unit.cluster_has = True
                if unit.state in (CLAIMING, WAITING):
                    self._idle(unit)  # re-rank with the cluster copy even if we knew the node already
            self.add_holders(msg.chunk, hosts, now)
        else:
            raise TypeError(f"not a fetch input: {type(msg).__name__}")
        self._pump(now)

    def next_deadline(self) -> float | None:
        deadlines = [f.deadline for f in self._inflight.values()]
        deadlines += [u.deadline for u in self._window() if u.deadline is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        for rid, f in list(self._inflight.items()):
            if f.deadline <= now:
                self._abandon(rid, "timeout")
        for unit in self._window():
            if unit.deadline is None or unit.deadline > now:
                continue
            if unit.state == CLAIMING:  # the master is silent: go without coalescing
                unit.granted = True
            self._idle(unit)  # WAITING: claim again; LOOKUP: try again or fail
        self._pump(now)

    def drain(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    # --- internals ---

    def _window(self) -> list[_Unit]:
        limit = self._next + self.config.max_ahead
        units = []
        for unit in self._order[self._cursor:]:
            if unit.indexes[0] >= limit:
                break
            units.append(unit)
        return units

    def _idle(self, unit: _Unit) -> None:
        unit.state, unit.deadline = IDLE, None

    def _pick(self, unit: _Unit) -> Estimate | None:
        best: Estimate | None = None
        live = [(n, h) for n, h in unit.holders.items() if n not in unit.tried and n not in self._dead]
        if unit.cluster_has and any(h.cluster == self.local.cluster for _, h in live):
            live = [(n, h) for n, h in live if h.cluster == self.local.cluster]
        for node, host in live:
            e = self.costs.estimate(self.local, host, _planned_size(unit.ref), self._queued.get(node, 0))
            if best is None or (e.cost, node) < (best.cost, best.holder.node):
                best = e
        return best

    def _claim(self, unit: _Unit) -> WanClaim:
        tried = sorted(n for n in unit.tried | self._dead
                       if n in unit.holders and unit.holders[n].cluster == self.local.cluster)
        return WanClaim(unit.ref.hash, tuple(tried[:MAX_TRIED]))

    def _start(self, unit: _Unit, now: float) -> None:
        best = self._pick(unit)
        if best is None:
            if unit.lookups >= self.config.max_lookups:
                self._fail(unit, "no_holder")
            else:
                unit.lookups += 1
                unit.state, unit.deadline = LOOKUP, now + self.config.lookup_timeout
                self._out.append(NeedHolders(unit.ref.hash))
            return
        if best.cross_cluster and not unit.granted:
            if self.config.coalesce:
                unit.state, unit.deadline = CLAIMING, now + self.config.claim_timeout
                self._out.append(ToMaster(self._claim(unit)))
                return
            unit.granted = True
        if best.cross_cluster:
            if unit.claimed and unit.wan_requests > 0:
                self._out.append(ToMaster(self._claim(unit)))  # renew the lease for the retry
            unit.wan_requests += 1
        rid, self._next_id = self._next_id, self._next_id + 1
        deadline = now + self.config.timeout_base + _planned_size(unit.ref) / self.config.min_bandwidth
        self._inflight[rid] = _InFlight(unit, best, now, deadline)
        node = best.holder.node
        self._queued[node] = self._queued.get(node, 0) + _planned_size(unit.ref)
        unit.state, unit.deadline = INFLIGHT, None
        self._out.append(Request(rid, unit.ref, best, deadline))

    def _pop(self, rid: int) -> _InFlight | None:
        f = self._inflight.pop(rid, None)
        if f is not None:
            node = f.estimate.holder.node
            left = self._queued[node] - _planned_size(f.unit.ref)
            if left:
                self._queued[node] = left
            else:
                del self._queued[node]
        return f

    def _abandon(self, rid: int, reason: str) -> None:
        f = self._pop(rid)
        if f is None:
            return
        self._out.append(Cancel(rid))
        self._out.append(HolderFault(f.estimate.holder, f.unit.ref.hash, reason))
        f.unit.tried.add(f.estimate.holder.node)
        self._idle(f.unit)

    def _result(self, msg: ChunkOk | ChunkError, now: float) -> None:
        f = self._pop(msg.request_id)
        if f is None or self.failed:
            self.stale_results += 1
            return
        unit, holder = f.unit, f.estimate.holder
        if isinstance(msg, ChunkOk):
            data = msg.data
            digest = msg.digest if msg.digest is not None else chunk_hash(data)
            if unit.ref.size in (0, len(data)) and digest == unit.ref.hash:
                self.costs.observe_transfer(self.local, holder, len(data), now - f.sent)
                unit.state, unit.deadline, unit.data = DONE, None, bytes(data)
                self._out.append(BecameHolder(unit.ref, unit.data, f.estimate.cross_cluster))
                if unit.claimed:
                    unit.claimed = False
                    self._out.append(ToMaster(WanDone(unit.ref.hash, True)))
                self._deliver()
                return
            reason = "corrupt"
        else:
            reason = msg.reason
        self._out.append(HolderFault(holder, unit.ref.hash, reason))
        unit.tried.add(holder.node)
        self._idle(unit)

    def _grant(self, chunk: str) -> None:
        unit = self._units.get(chunk)
        if unit is None:
            return
        if unit.state in (DONE, FAILED) or self.failed:
            self._out.append(ToMaster(WanDone(chunk, unit.state == DONE)))  # release what we cannot use
            return
        unit.granted = unit.claimed = True
        if unit.state in (CLAIMING, WAITING, IDLE):
            self._idle(unit)

    def _fail(self, unit: _Unit, reason: str) -> None:
        unit.state, unit.deadline = FAILED, None
        self.failed = True
        self._out.append(FetchFailed(unit.indexes[0], unit.ref, reason))
        for rid in list(self._inflight):
            self._pop(rid)
            self._out.append(Cancel(rid))
        for u in self._units.values():
            if u.claimed:
                u.claimed = False
                self._out.append(ToMaster(WanDone(u.ref.hash, u.state == DONE)))

    def _deliver(self) -> None:
        while self._next < len(self._by_index):
            unit = self._by_index[self._next]
            if unit.data is None:
                break
            self._out.append(Deliver(self._next, unit.ref, unit.data))
            self._next += 1
            unit.undelivered -= 1
            if unit.undelivered == 0:
                unit.data = None  # delivered everywhere it occurs: free the buffer

    def _pump(self, now: float) -> None:
        if self.failed:
            return
        while self._cursor < len(self._order) and self._order[self._cursor].state == DONE \
                and self._order[self._cursor].undelivered == 0:
            self._cursor += 1
        for unit in self._window():
            if self.failed or len(self._inflight) >= self.config.max_parallel:
                break
            if unit.state == IDLE:
                self._start(unit, now)


UNKNOWN_SIZE_GUESS = 256 * 1024


def _planned_size(ref: ChunkRef) -> int:
    """The size to plan with: a ref of size 0 names a chunk by its hash alone (a directory object
    whose size nobody recorded; no real chunk is empty), checked by hash and planned at a guess."""
    return ref.size or UNKNOWN_SIZE_GUESS
