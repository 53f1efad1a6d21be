"""A tiny deterministic world for the fetch cores: hosts in clusters, holders that may misbehave,
one master (HolderIndex + WanCoalescer) per cluster, a virtual clock and an event heap.

It also audits every Request as it is emitted: the holder chosen must be of least expected cost
among the live holders the reader knows and has not seen fail for that chunk.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.core.costs import CostModel, Host, PriceTable
from mesh.core.fetch import (
    BecameHolder,
    Cancel,
    ChunkError,
    ChunkOk,
    Deliver,
    FetchConfig,
    FetchFailed,
    FetchPlanner,
    HolderFault,
    InCluster,
    NeedHolders,
    Request,
    ToMaster,
    WanCoalescer,
    message_from_wire,
)
from mesh.core.holders import HolderIndex, HolderReport
from mesh.core.manifest import ChunkRef, chunk_hash

BEHAVIOURS = ("ok", "corrupt", "missing", "error", "silent")


@dataclass
class Reader:
    name: str
    host: Host
    planner: FetchPlanner
    model: CostModel
    known: dict[str, set[Host]] = field(default_factory=lambda: defaultdict(set))
    failed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    cluster_has: set[str] = field(default_factory=set)  # chunks the master answered InCluster for
    inflight: dict[int, Request] = field(default_factory=dict)
    delivered: list[Deliver] = field(default_factory=list)
    outcome: FetchFailed | None = None
    max_inflight: int = 0


class World:
    def __init__(self, table: PriceTable | None = None, coords: dict[str, tuple[float, float]] | None = None,
                 coalesce: bool = True) -> None:
        self.now = 0.0
        self.table = table or PriceTable()
        self.coords = coords or {}
        self.coalesce = coalesce
        self.stores: dict[Host, dict[str, bytes]] = {}
        self.behaviour: dict[tuple[str, str], str] = {}  # (node, chunk) -> how it answers
        self.dead: set[str] = set()
        self.masters: dict[str, tuple[HolderIndex, WanCoalescer]] = {}
        self.readers: list[Reader] = []
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.wan_pulls: Counter[tuple[str, str]] = Counter()  # (reader cluster, chunk) -> successful WAN answers
        self.requests: list[tuple[str, Request]] = []

    # --- setup ---

    def rtt(self, a: str, b: str) -> float | None:
        if a not in self.coords or b not in self.coords:
            return None
        return math.dist(self.coords[a], self.coords[b]) + 0.0005

    def model(self) -> CostModel:
        return CostModel(self.table, rtt=self.rtt)

    def master(self, cluster: str) -> tuple[HolderIndex, WanCoalescer]:
        if cluster not in self.masters:
            index = HolderIndex(ttl=1e9)
            self.masters[cluster] = (index, WanCoalescer(index, lease=60.0))
        return self.masters[cluster]

    def hold(self, host: Host, data: bytes) -> str:
        h = chunk_hash(data)
        self.stores.setdefault(host, {})[h] = data
        index, _ = self.master(host.cluster)
        if host.node not in index.nodes():
            index.receive(host.node, HolderReport(1, 1, (h,), full=True), self.now)
        else:
            index.add(host.node, h, self.now)
        return h

    def reader(self, host: Host, chunks: list[ChunkRef], config: FetchConfig | None = None,
               tell: str = "all") -> Reader:
        """A reader told about holders: "all" known anywhere, "cluster" only its own (more by lookup)."""
        self.stores.setdefault(host, {})
        self.master(host.cluster)
        model = self.model()
        cfg = config or FetchConfig(coalesce=self.coalesce)
        known = {}
        for ref in {c.hash: c for c in chunks}.values():
            holders = self.holders_of(ref.hash)
            known[ref.hash] = [h for h in holders if h.cluster == host.cluster] if tell == "cluster" else holders
        r = Reader(f"r{len(self.readers)}", host, FetchPlanner(host, chunks, model, self.now, cfg, known), model)
        for chunk, holders in known.items():
            r.known[chunk].update(holders)
        self.readers.append(r)
        self._effects(r)
        return r

    def holders_of(self, chunk: str) -> list[Host]:
        return sorted(h for h, s in self.stores.items() if chunk in s)

    # --- the loop ---

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, fn))

    def run(self, until: float = 1e6, max_steps: int = 200_000) -> None:
        for _ in range(max_steps):
            deadlines = [(d, r) for r in self.readers if (d := r.planner.next_deadline()) is not None]
            deadlines += [(d, co) for _, co in self.masters.values() if (d := co.next_deadline()) is not None]
            t_event = self.events[0][0] if self.events else math.inf
            t_timer, core = min(deadlines, key=lambda x: x[0], default=(math.inf, None))
            t = min(t_event, t_timer)
            if t == math.inf or t > until:
                return
            self.now = max(self.now, t)
            if t_event <= t_timer:
                heapq.heappop(self.events)[2]()
            elif isinstance(core, Reader):
                core.planner.handle_timer(self.now)
                self._effects(core)
            else:
                core.handle_timer(self.now)
                self._master_sends(core)
        raise AssertionError(f"no quiescence after {max_steps} steps (a livelock?)")

    def _tell(self, r: Reader, chunk: str, holders: list[Host]) -> None:
        r.known[chunk].update(holders)
        r.planner.add_holders(chunk, holders, self.now)

    def _effects(self, r: Reader) -> None:
        for e in r.planner.drain():
            if isinstance(e, Request):
                self._audit(r, e)
                r.inflight[e.request_id] = e
                r.max_inflight = max(r.max_inflight, len(r.inflight))
                self.requests.append((r.name, e))
                self._serve(r, e)
            elif isinstance(e, Cancel):
                r.inflight.pop(e.request_id, None)
            elif isinstance(e, HolderFault):
                r.failed[e.chunk].add(e.holder.node)
            elif isinstance(e, ToMaster):
                msg = message_from_wire(e.message.to_wire())
                _, co = self.master(r.host.cluster)
                self.at(self.now + 0.0005, lambda co=co, msg=msg: self._to_master(co, r.host.node, msg))
            elif isinstance(e, BecameHolder):
                assert chunk_hash(e.data) == e.ref.hash
                self.stores[r.host][e.ref.hash] = e.data
                self.master(r.host.cluster)[0].add(r.host.node, e.ref.hash, self.now)
            elif isinstance(e, Deliver):
                r.delivered.append(e)
            elif isinstance(e, NeedHolders):
                self.at(self.now + 0.01, lambda c=e.chunk: self._lookup(r, c))
            elif isinstance(e, FetchFailed):
                r.outcome = e

    def _lookup(self, r: Reader, chunk: str) -> None:
        new = [h for h in self.holders_of(chunk) if h not in r.known[chunk]]
        if new:
            self._tell(r, chunk, new)
        else:
            r.planner.no_more_holders(chunk, self.now)
        self._effects(r)

    def _to_master(self, co: WanCoalescer, node: str, msg: object) -> None:
        co.receive(node, msg, self.now)  # type: ignore[arg-type]
        self._master_sends(co)

    def _master_sends(self, co: WanCoalescer) -> None:
        for send in co.drain():
            r = next(x for x in self.readers if x.host.node == send.dest)
            msg = message_from_wire(send.message.to_wire())
            self.at(self.now + 0.0005, lambda r=r, msg=msg: self._deliver_to(r, msg))

    def _deliver_to(self, r: Reader, msg: object) -> None:
        if isinstance(msg, InCluster):
            r.known[msg.chunk].update(Host(n, r.host.cluster) for n in msg.nodes)
            r.cluster_has.add(msg.chunk)
        r.planner.receive(msg, self.now)  # type: ignore[arg-type]
        self._effects(r)

    def _serve(self, r: Reader, req: Request) -> None:
        holder = req.holder
        how = self.behaviour.get((holder.node, req.ref.hash), "ok")
        data = self.stores.get(holder, {}).get(req.ref.hash)
        if holder.node in self.dead or how == "silent":
            return
        rtt = self.rtt(r.host.node, holder.node) or 0.001
        took = rtt + req.ref.size / 1e7
        if data is None or how == "missing":
            answer: ChunkOk | ChunkError = ChunkError(req.request_id, "missing")
        elif how == "error":
            answer = ChunkError(req.request_id, "error")
        elif how == "corrupt":
            bad = bytes([data[0] ^ 1]) + data[1:] if data else b"x"
            # a runtime that hashed the bytes off the loop passes their (honest) digest along
            answer = ChunkOk(req.request_id, bad, chunk_hash(bad) if req.request_id % 2 else None)
        else:
            answer = ChunkOk(req.request_id, data, chunk_hash(data) if req.request_id % 2 else None)
            if holder.cluster != r.host.cluster:
                self.wan_pulls[(r.host.cluster, req.ref.hash)] += 1

        def answer_it() -> None:
            if r.inflight.pop(req.request_id, None) is None:
                return
            r.planner.receive(answer, self.now)
            self._effects(r)
        self.at(self.now + took, answer_it)

    # --- the audit ---

    def _audit(self, r: Reader, req: Request) -> None:
        queued: Counter[str] = Counter()
        for other in r.inflight.values():
            queued[other.holder.node] += other.ref.size
        chosen = r.model.estimate(r.host, req.holder, req.ref.size, queued[req.holder.node])
        assert chosen.cost == req.estimate.cost
        assert req.holder.node not in r.failed[req.ref.hash] and req.holder.node not in self.dead
        live = [h for h in r.known[req.ref.hash] if h.node not in r.failed[req.ref.hash] and h.node not in self.dead]
        if req.ref.hash in r.cluster_has and any(h.cluster == r.host.cluster for h in live):
            live = [h for h in live if h.cluster == r.host.cluster]
        assert req.holder in live
        for h in live:
            alt = r.model.estimate(r.host, h, req.ref.size, queued[h.node])
            assert (chosen.cost, req.holder.node) <= (alt.cost, h.node), (req, alt)

    def kill(self, node: str) -> None:
        self.dead.add(node)
        for r in self.readers:
            r.planner.holder_dead(node, self.now)
            self._effects(r)
        for index, co in self.masters.values():
            index.forget(node)
            co.forget(node, self.now)
            self._master_sends(co)
