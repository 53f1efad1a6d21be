"""Elton's fetch layer in the simulator: the real fetch and holder cores, wired as ``eltond`` wires them.

The cores are the ones ``mesh.runtime.fetch`` (``MeshRemote`` / ``_Read``) and ``mesh.runtime.holders``
(``HolderService``) drive; this module is their simulated runtime, with every message between hosts
sent over ``sim.network`` (sized as its msgpack encoding plus the signed envelope, so latency,
bandwidth queuing, loss, partitions and crashes apply to it):

- every host that holds chunks runs a ``HolderReporter`` (created at its first chunk, again with a
  new epoch after a restart: its chunks survive on disk, its soft state does not); its reports go to
  the cluster's coalescing master (the live master with the lowest node id, as in ``HolderService``);
  when that master changes, every reporter of the cluster is asked for a full report;
- the coalescing master runs the cluster's ``HolderIndex`` and ``WanCoalescer``, answers ``WhoHolds``
  lookups, takes ``WanClaim``/``WanDone`` and ``holders.drop``, and sends the coalescer's answers;
- a read runs one ``FetchPlanner``: holders are looked up at the masters (and the manifest's author
  is added as a hint, as ``_Read.start`` does), then its effects are carried out in order:
  ``Request`` -> a chunk GET to the holder and the chunk back (``ChunkOk`` with ``sim.content``'s
  stand-in bytes, ``ChunkError("missing")`` from a host that does not hold it, ``"error"`` when the
  network fails it), ``Cancel``, ``ToMaster``, ``NeedHolders`` (a lookup at every cluster's master,
  gathered for 10 ms), ``BecameHolder`` (stored at once, reported in the next delta),
  ``Deliver``, ``HolderFault`` (``missing`` in the own cluster -> ``holders.drop``), ``FetchFailed``;
  the planner's one timer is re-armed at ``next_deadline()`` after every call.

A read asks the planner only for the chunks its host's disk lacks; a chunk another read of the same
host is already fetching is waited for, not fetched again (``Repository._read_slices``).

The failure detector: with real membership (``view`` set), ``member_dead(observer, node)`` and
``member_changed`` come from each host's ``Membership`` core events and ``alive(observer, node)``
from its view; ``process_changed`` is only what a crash or restart does on the host itself. In the
model (``view`` None), ``host_changed`` sees a crash at once in the index, the coalescer, the
planners and the cost models, a restart too. Either way, every ``TOUCH_S`` the coalescing master
renews the index leases of the hosts live in its view, as ``HolderService.refresh`` does (so a
scenario may stretch heartbeats, ``[elton] holder_heartbeat_s``).

Differences from ``eltond``, all on the runtime side: the coalescing master is chosen with one view
for the whole cluster, that of its lowest running master (eltond: each host's own view);
only the coalescing master keeps an index (``eltond`` reports to every master of the cluster; the
others are never asked here); a read first asks its own cluster's master and asks the other
clusters' masters only about the chunks its own cluster lacks (``eltond`` asks all at once); a
report's reply is only simulated when it asks for a full report; a cancelled request's bytes keep
flowing (a pipe cannot abort a flow) but its answer is ignored, as the planner ignores it.

The WAN invariant is checked against the simulator's ground truth, not the index: when a pull the
cluster's master granted starts, no other granted pull of that chunk into the cluster may be in
flight and no live host of the cluster may have held it for ``SETTLE_S`` (time to report it)
without having failed this read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.core.codec import pack
from mesh.core.costs import CostModel, Host
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
    WanClaim,
    WanCoalescer,
    WanDone,
    WanGrant,
    WanWait,
)
from mesh.core.holders import MAX_QUERY_CHUNKS, HolderIndex, HolderReport, HolderReporter, WhoHolds
from mesh.core.manifest import ChunkRef, Manifest
from mesh.errors import ProtocolError
from sim.content import chunk_data, chunk_ref_of
from sim.engine import Timer
from sim.host import ENVELOPE_BYTES
from sim.systems.base import CONTROL_BYTES, Context

# the values mesh.runtime.holders.HolderService uses
INDEX_TTL = 30.0
LEASE = 120.0
DELTA_INTERVAL = 0.2
HEARTBEAT = 5.0  # a scenario may stretch it ([elton] holder_heartbeat_s): the failure detector keeps leases
TOUCH_S = 10.0  # how often the modelled failure detector renews the index leases of live nodes (HolderService.refresh)
LOOKUP_GATHER = 0.01  # _Read._lookup gathers a burst of NeedHolders
SETTLE_S = 2.0  # a new holder's report reaches its master within this (delta interval + LAN latency)

Notice = WanGrant | WanWait | InCluster


def wire_size(msg: Any) -> int:
    return len(pack(msg.to_wire())) + ENVELOPE_BYTES


@dataclass(eq=False)
class NodeState:
    """The fetch-layer state of one host: its chunks (on disk) and its soft state."""

    name: str
    cluster: str
    store: dict[str, float] = field(default_factory=dict)  # chunk -> when it was stored
    reporter: HolderReporter | None = None
    reporting_since: float = 0.0  # when the current reporter started
    epoch: int = 0
    timer: Timer | None = None
    armed: float | None = None
    reads: dict[int, Read] = field(default_factory=dict)
    fetching: dict[str, Read] = field(default_factory=dict)  # chunk -> the read of this host fetching it


@dataclass(eq=False)
class MasterState:
    """A cluster's coalescing master: its HolderIndex and WanCoalescer (lost when it crashes)."""

    host: str
    cluster: str
    index: HolderIndex
    coalescer: WanCoalescer
    elected: float = 0.0
    timer: Timer | None = None
    armed: float | None = None
    lost: bool = False  # its host crashed: a restart starts a new index and coalescer


class FetchLayer:
    def __init__(self, ctx: Context, master_order: dict[str, list[str]],
                 model: Callable[[str], CostModel], config: FetchConfig | None = None,
                 heartbeat: float = HEARTBEAT) -> None:
        self.ctx = ctx
        self.net = ctx.net
        self.engine = ctx.engine
        self.master_order = master_order  # cluster -> its master hosts, lowest node id first
        self.model = model  # cluster -> the CostModel its readers share
        self.config = config or FetchConfig()
        self.heartbeat = heartbeat
        # the failure detector: is ``node`` live in ``observer``'s view? (None: the model, the simulator's up/down)
        self.view: Callable[[str, str], bool] | None = None
        self.nodes: dict[str, NodeState] = {}
        self._host_objs: dict[str, Host] = {}
        self.by_cluster: dict[str, dict[str, NodeState]] = {}
        self.coalescing: dict[str, MasterState | None] = {}
        self.holders_of: dict[str, dict[str, None]] = {}  # chunk -> hosts that store it (ground truth)
        self.reads: dict[int, Read] = {}
        self.grants: dict[tuple[str, str], str] = {}  # (cluster, chunk) -> host told WanGrant, not yet done
        self.wan_flights: dict[tuple[str, str], dict[tuple[str, int], None]] = {}  # granted WAN requests
        self._read_ids = 0
        self.stats: dict[str, int] = {}
        self.planners: list[FetchPlanner] = []  # the last few, for tests (bounded)
        self.coalescers_made = 0
        self.grants_total = 0  # WanCoalescer.granted summed over every coalescer that ever ran
        for cluster in master_order:
            self._elect(cluster)
        self.engine.at(TOUCH_S, self._touch)

    def _touch(self) -> None:
        """The failure detector sees every live node of a cluster alive: its index lease is renewed."""
        now = self.engine.now
        for cluster, m in self.coalescing.items():
            if m is not None and self._current(m):
                for st in self.by_cluster.get(cluster, {}).values():
                    if st.reporter is not None and self.alive(m.host, st.name):
                        m.index.touch(st.name, now)
                self._arm_master(m)
        self.engine.after(TOUCH_S, self._touch)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def up(self, host: str) -> bool:
        """Is the host's process running (ground truth: what it does itself, not what others see)?"""
        return self.net.hosts[host].up

    def alive(self, observer: str, node: str) -> bool:
        """Is ``node`` live in ``observer``'s view (its membership core, or the model: ground truth)?"""
        return self.up(node) if self.view is None else self.view(observer, node)

    def host_obj(self, host: str) -> Host:
        """The cost model's (frozen) Host of a simulated host, made once."""
        h = self._host_objs.get(host)
        if h is None:
            h = self._host_objs[host] = Host(host, self.net.hosts[host].cluster)
        return h

    def node(self, host: str) -> NodeState:
        st = self.nodes.get(host)
        if st is None:
            cluster = self.net.hosts[host].cluster
            st = self.nodes[host] = NodeState(host, cluster)
            self.by_cluster.setdefault(cluster, {})[host] = st
        return st

    # ---- masters -----------------------------------------------------------------------------

    def reference(self, cluster: str) -> str | None:
        """The running master whose view stands for the cluster's (the lowest node id of those running)."""
        return next((h for h in self.master_order.get(cluster, []) if self.up(h)), None)

    def _elect(self, cluster: str) -> None:
        """The coalescing master is the live master with the lowest node id; a new one starts empty.

        With real membership, "live" is in the view of the cluster's reference master (in eltond every
        host computes it from its own view; one view stands for the cluster's here)."""
        ref = self.reference(cluster)
        want = None if ref is None else next((h for h in self.master_order.get(cluster, []) if self.alive(ref, h)),
                                             None)
        cur = self.coalescing.get(cluster)
        if cur is not None and cur.host == want and not cur.lost:
            return
        if cur is not None:
            self.grants_total += cur.coalescer.granted
            if cur.timer is not None:
                cur.timer.cancel()
        if want is None:
            self.coalescing[cluster] = None
            return
        index = HolderIndex(ttl=INDEX_TTL)
        self.coalescing[cluster] = MasterState(want, cluster, index, WanCoalescer(index, lease=LEASE),
                                               self.engine.now)
        self.coalescers_made += 1
        for st in self.by_cluster.get(cluster, {}).values():  # a new master: send it everything
            if st.reporter is not None:
                st.reporter.request_full()
                self._arm_reporter(st)

    def _current(self, m: MasterState) -> bool:
        return self.coalescing.get(m.cluster) is m and self.up(m.host)

    def _arm_master(self, m: MasterState) -> None:
        deadlines = [d for d in (m.index.next_deadline(), m.coalescer.next_deadline()) if d is not None]
        deadline = min(deadlines, default=None)
        if deadline == m.armed:
            return
        if m.timer is not None:
            m.timer.cancel()
        m.armed = deadline
        m.timer = None if deadline is None else self.engine.timer(deadline, self._master_timer, m)

    def _master_timer(self, m: MasterState) -> None:
        m.timer = m.armed = None
        if not self._current(m):
            return
        now = self.engine.now
        m.index.handle_timer(now)
        m.index.drain()  # full-report requests only come as report replies (as in HolderService)
        m.coalescer.handle_timer(now)
        self._flush(m)

    def _flush(self, m: MasterState) -> None:
        for send in m.coalescer.drain():
            dest, msg = send.dest, send.message
            self.net.send(m.host, dest, wire_size(msg), lambda d=dest, x=msg: self._notice(d, x), "control")
        self._arm_master(m)

    def _at_master(self, m: MasterState, node: str, msg: WanClaim | WanDone) -> None:
        if not self._current(m):
            return
        m.coalescer.receive(node, msg, self.engine.now)
        self._flush(m)

    def to_master(self, host: str, msg: WanClaim | WanDone) -> None:
        cluster = self.net.hosts[host].cluster
        if isinstance(msg, WanDone) and self.grants.get((cluster, msg.chunk)) == host:
            del self.grants[(cluster, msg.chunk)]
        m = self.coalescing.get(cluster)
        if m is None:
            self.count("to_master_no_master")
            return  # the planner bypasses a silent master after claim_timeout
        self.net.send(host, m.host, wire_size(msg), lambda: self._at_master(m, host, msg), "control")

    def _notice(self, host: str, msg: Notice) -> None:
        """A coalescer message reached ``host``: every read there that fetches the chunk hears it."""
        st = self.node(host)
        heard = False
        for r in list(st.reads.values()):
            if msg.chunk in r.hashes and r.planner is not None:
                heard = True
                if isinstance(msg, WanGrant):
                    self.grants[(st.cluster, msg.chunk)] = host
                r.planner.receive(msg, self.engine.now)
                r.pump()
        if not heard and isinstance(msg, WanGrant):  # a grant nobody can use: give it back (_Read.close)
            self.to_master(host, WanDone(msg.chunk, False))

    def drop(self, host: str, holder: str, chunk: str) -> None:
        m = self.coalescing.get(self.net.hosts[host].cluster)
        if m is not None:
            self.net.send(host, m.host, CONTROL_BYTES,
                          lambda: m.index.drop(holder, chunk) if self._current(m) else None, "control")

    # ---- holders and reports -----------------------------------------------------------------------

    def hold(self, host: str, chunks: list[str]) -> None:
        """``host`` stored these chunks (a write, a fetched copy): kept on disk, reported in the next delta."""
        st = self.node(host)
        for h in chunks:
            if h not in st.store:
                st.store[h] = self.engine.now
                self.holders_of.setdefault(h, {})[host] = None
            if st.reporter is not None:
                st.reporter.added(h)
        if st.reporter is None and self.up(host):
            self._new_reporter(st)
        else:
            self._arm_reporter(st)
        for h in chunks:  # reads of this host that wait for another read's fetch of it
            if st.fetching.pop(h, None) is not None:
                for r in list(st.reads.values()):
                    if h in r.waiting:
                        r.waiting.discard(h)
                        r.check_done()

    def _new_reporter(self, st: NodeState) -> None:
        st.epoch += 1
        st.reporting_since = self.engine.now
        st.reporter = HolderReporter(st.epoch, st.store, self.engine.now,
                                     delta_interval=DELTA_INTERVAL, heartbeat=self.heartbeat)
        self.count("reporters_started")
        self._arm_reporter(st)

    def _arm_reporter(self, st: NodeState) -> None:
        if st.reporter is None:
            return
        deadline = st.reporter.next_deadline()
        if deadline == st.armed:
            return
        if st.timer is not None:
            st.timer.cancel()
        st.armed = deadline
        st.timer = self.engine.timer(deadline, self._report, st)

    def _report(self, st: NodeState) -> None:
        st.timer = st.armed = None
        if st.reporter is None or not self.up(st.name):
            return
        st.reporter.handle_timer(self.engine.now)
        m = self.coalescing.get(st.cluster)
        for report in st.reporter.drain():
            if m is None:
                self.count("reports_without_master")
                continue  # lost: a new master asks for a full report
            self.count("holder_reports")
            self.net.send(st.name, m.host, wire_size(report),
                          lambda r=report: self._report_at_master(m, st, r), "control")
        self._arm_reporter(st)

    def _report_at_master(self, m: MasterState, st: NodeState, report: HolderReport) -> None:
        if not self._current(m):
            return
        try:
            m.index.receive(st.name, report, self.engine.now)
        except ProtocolError:
            self.count("reports_refused")
        wants_full = any(ask.dest == st.name for ask in m.index.drain())
        self._arm_master(m)
        if wants_full:  # the report's reply says {"full": true}
            epoch = report.epoch

            def reply() -> None:
                if st.reporter is not None and st.reporter.epoch == epoch:
                    st.reporter.request_full()
                    self._arm_reporter(st)

            self.net.send(m.host, st.name, CONTROL_BYTES, reply, "control")

    # ---- lookups ------------------------------------------------------------------------------------

    def lookup(self, host: str, chunks: list[str], done: Callable[[dict[str, list[Host]]], None],
               own_first: bool) -> None:
        """Live holders of ``chunks`` other than ``host``, from the clusters' coalescing masters.

        ``own_first``: ask the own cluster, then the others only about the chunks it has no holder of.
        """
        cluster = self.net.hosts[host].cluster
        found: dict[str, list[Host]] = {c: [] for c in chunks}
        others = [c for c in self.master_order if c != cluster]

        def add(c: str, entries: dict[str, tuple[str, ...]]) -> None:
            for chunk, nodes in entries.items():
                if chunk in found:
                    found[chunk].extend(self.host_obj(n) for n in nodes if n != host and self.alive(host, n))

        def ask_all(clusters: list[str], which: list[str], then: Callable[[], None]) -> None:
            if not clusters or not which:
                then()
                return
            left = [len(clusters)]

            def one(c: str, entries: dict[str, tuple[str, ...]]) -> None:
                add(c, entries)
                left[0] -= 1
                if left[0] == 0:
                    then()

            for c in clusters:
                self._ask(host, c, which, lambda e, c=c: one(c, e))

        if own_first:
            def after_own() -> None:
                missing = [c for c in chunks if not found[c]]
                ask_all(others, missing, lambda: done(found))

            ask_all([cluster], chunks, after_own)
        else:
            ask_all([cluster, *others], chunks, lambda: done(found))

    def _ask(self, host: str, cluster: str, chunks: list[str],
             done: Callable[[dict[str, tuple[str, ...]]], None]) -> None:
        m = self.coalescing.get(cluster)
        if m is None:
            self.engine.after(0.0, done, {})
            return
        batches = [tuple(chunks[i:i + MAX_QUERY_CHUNKS]) for i in range(0, len(chunks), MAX_QUERY_CHUNKS)]
        out: dict[str, tuple[str, ...]] = {}
        left = [len(batches)]

        def answered(entries: dict[str, tuple[str, ...]]) -> None:
            out.update(entries)
            left[0] -= 1
            if left[0] == 0:
                done(out)

        for batch in batches:
            query = WhoHolds(batch)
            self.count("holder_lookups")

            def at_master(q: WhoHolds = query) -> None:
                if not self._current(m):
                    answered({})
                    return
                answer = m.index.answer(q, cluster, self.engine.now)
                self.net.send(m.host, host, wire_size(answer), lambda: answered(dict(answer.entries)),
                              "control", on_fail=lambda: answered({}))

            self.net.send(host, m.host, wire_size(query), at_master, "control", on_fail=lambda: answered({}))

    # ---- reads ----------------------------------------------------------------------------------------

    def read(self, host: str, manifest: Manifest, started: float, done: Callable[[bool], None]) -> None:
        self._read_ids += 1
        r = Read(self, self._read_ids, host, manifest, started, done)
        self.reads[r.id] = r
        self.node(host).reads[r.id] = r
        r.start()

    def wan_start(self, r: Read, rid: int, ref: ChunkRef) -> None:
        """A request for ``ref`` crosses the WAN into ``r``'s cluster: check the invariant, track it."""
        cluster = r.cluster
        self.count("wan_chunk_fetches")
        if self.grants.get((cluster, ref.hash)) != r.host:
            self.count("wan_fetches_uncoalesced")  # the master was silent: the planner went without a grant
            return
        flights = self.wan_flights.setdefault((ref.hash, cluster), {})
        self.ctx.checker.on_wan_fetch(self.engine.now, ref.hash, cluster, len(self.settled_holders(r, ref.hash)),
                                      len(flights))
        flights[(r.host, rid)] = None

    def settled_holders(self, r: Read, chunk: str) -> list[str]:
        """The oracle for the WAN invariant, from the simulator's own ground truth (not the index): live
        hosts of ``r``'s cluster that store ``chunk`` and have had ``SETTLE_S`` to report it to the
        current coalescing master, and have not failed ``r`` for it."""
        m = self.coalescing.get(r.cluster)
        if m is None:
            return []
        now, faulted = self.engine.now, r.faulted.get(chunk, {})
        out = []
        for n in self.holders_of.get(chunk, {}):
            st = self.nodes[n]
            if (st.cluster == r.cluster and n != r.host and n not in faulted and self.up(n) and st.reporter is not None
                    and max(st.store[chunk], st.reporting_since, m.elected) + SETTLE_S <= now):
                out.append(n)
        return out

    def wan_end(self, r: Read, rid: int, chunk: str) -> None:
        flights = self.wan_flights.get((chunk, r.cluster))
        if flights is not None:
            flights.pop((r.host, rid), None)
            if not flights:
                del self.wan_flights[(chunk, r.cluster)]

    # ---- crashes, restarts and the failure detector ----------------------------------------------

    def host_changed(self, host: str, up: bool) -> None:
        """The modelled failure detector: a crash or a restart is seen by everyone at once."""
        if not up:
            self.process_changed(host, False)
            for c in self.master_order:
                self.model(c).bandwidth.forget(host)
            m = self.coalescing.get(self.net.hosts[host].cluster)
            if m is not None and self._current(m):
                m.index.forget(host)
                m.coalescer.forget(host, self.engine.now)
                self._flush(m)
            now = self.engine.now
            for r in list(self.reads.values()):
                if r.planner is not None:
                    r.planner.holder_dead(host, now)
                    r.pump()
        else:
            self.process_changed(host, True)

    def process_changed(self, host: str, up: bool) -> None:
        """What a crash or a restart does on the host itself: its soft state is lost, its reads fail;
        a restarted host reports its chunks (on disk) again with a new epoch."""
        h = self.net.hosts[host]
        st = self.nodes.get(host)
        if not up:
            if st is not None:
                if st.timer is not None:
                    st.timer.cancel()
                st.timer = st.armed = None
                st.reporter = None
                for r in list(st.reads.values()):
                    r.finish(False)
            for key in [k for k, v in self.grants.items() if v == host]:
                del self.grants[key]
            cur = self.coalescing.get(h.cluster)
            if cur is not None and cur.host == host:
                cur.lost = True
            if h.master:
                self._elect(h.cluster)  # the model elects another; real membership, maybe a new reference
        else:
            if h.master:
                self._elect(h.cluster)
            if st is not None and st.store:
                self._new_reporter(st)

    def member_dead(self, observer: str, node: str) -> None:
        """``observer``'s membership core says ``node`` is dead or left (``HolderService.forget`` and
        ``_Read._dead``): its master forgets it in the index and the coalescer, its reads' planners drop it."""
        o = self.net.hosts[observer]
        now = self.engine.now
        m = self.coalescing.get(o.cluster)
        if m is not None and m.host == observer and self._current(m):
            m.index.forget(node)
            m.coalescer.forget(node, now)
            self._flush(m)
        st = self.nodes.get(observer)
        if st is not None and st.reads:
            self.model(o.cluster).bandwidth.forget(node)
            for r in list(st.reads.values()):
                if r.planner is not None and not r.finished:
                    r.planner.holder_dead(node, now)
                    r.pump()
        self.member_changed(observer, node)

    def member_changed(self, observer: str, node: str) -> None:
        """A master of ``observer``'s cluster changed state in its view: re-elect if it is the reference."""
        o, n = self.net.hosts[observer], self.net.hosts[node]
        if n.master and n.cluster == o.cluster and self.reference(o.cluster) == observer:
            self._elect(o.cluster)

    def report(self) -> dict[str, Any]:
        grants = self.grants_total + sum(m.coalescer.granted for m in self.coalescing.values() if m is not None)
        return {"planners": self.stats.get("planners", 0), "coalescers": self.coalescers_made,
                "wan_grants": grants, **{k: v for k, v in sorted(self.stats.items()) if k != "planners"}}


class Read:
    """One read of a ``(key, version)`` on ``host``: a FetchPlanner and the carrying out of its effects."""

    def __init__(self, layer: FetchLayer, rid: int, host: str, manifest: Manifest, started: float,
                 done: Callable[[bool], None]) -> None:
        self.layer = layer
        self.id = rid
        self.host = host
        self.cluster = layer.net.hosts[host].cluster
        self.manifest = manifest
        self.started = started
        self.done = done
        st = layer.node(host)
        # what the local store lacks, each chunk once; a chunk another read of this host is fetching is
        # waited for, not fetched again (Repository._read_slices); the remote fetches the rest
        missing = list({c.hash: c for c in manifest.chunks if c.hash not in st.store}.values())
        self.refs = [c for c in missing if c.hash not in st.fetching]
        self.waiting = {c.hash for c in missing if c.hash in st.fetching}
        for c in self.refs:
            st.fetching[c.hash] = self
        self.hashes = {c.hash for c in self.refs}
        self.told: dict[str, set[str]] = {h: set() for h in self.hashes}
        self.faulted: dict[str, dict[str, None]] = {}
        self.planner: FetchPlanner | None = None
        self.timer: Timer | None = None
        self.armed: float | None = None
        self.live: dict[int, Request] = {}  # requests sent and not cancelled
        self.need: dict[str, None] = {}
        self.fetched: dict[str, bytes] = {}  # chunk -> its delivered bytes
        self.finished = False

    def start(self) -> None:
        if not self.refs:
            self.check_done()
            return
        self.layer.lookup(self.host, sorted(self.hashes), self._begin, own_first=True)

    def _begin(self, known: dict[str, list[Host]]) -> None:
        if self.finished:
            return
        layer = self.layer
        author = self.manifest.author
        if author and author != self.host and author in layer.net.hosts and layer.alive(self.host, author):
            hint = layer.host_obj(author)
            for hosts in known.values():
                if all(x.node != author for x in hosts):
                    hosts.append(hint)
        for h, hosts in known.items():
            self.told[h].update(x.node for x in hosts)
        self.planner = FetchPlanner(layer.host_obj(self.host), self.refs, layer.model(self.cluster),
                                    layer.engine.now, layer.config, known)
        layer.count("planners")
        layer.planners.append(self.planner)
        del layer.planners[:-8]
        self.pump()

    def pump(self) -> None:
        p = self.planner
        if p is None or self.finished:
            return
        for e in p.drain():  # all of them, in order: a failure is followed by its Cancels and WanDones
            self._do(e)
        if self.finished:
            return
        if p.finished:
            self.check_done()
            return
        deadline = p.next_deadline()
        if deadline != self.armed:
            if self.timer is not None:
                self.timer.cancel()
            self.armed = deadline
            self.timer = None if deadline is None else self.layer.engine.timer(deadline, self._fire)

    def check_done(self) -> None:
        if self.finished:
            return
        p = self.planner
        if p is not None and p.failed:
            self.finish(False)
        elif (p is not None and p.done or not self.refs) and not self.waiting:
            self.finish(True)

    def _fire(self) -> None:
        self.timer = self.armed = None
        if self.planner is not None and not self.finished:
            self.planner.handle_timer(self.layer.engine.now)
            self.pump()

    def _do(self, e: Any) -> None:
        layer = self.layer
        if isinstance(e, Request):
            self._request(e)
        elif isinstance(e, Cancel):
            req = self.live.pop(e.request_id, None)
            if req is not None:
                layer.wan_end(self, e.request_id, req.ref.hash)
        elif isinstance(e, ToMaster):
            layer.to_master(self.host, e.message)
        elif isinstance(e, NeedHolders):
            if not self.need:
                layer.engine.after(LOOKUP_GATHER, self._lookup)
            self.need[e.chunk] = None
        elif isinstance(e, BecameHolder):
            layer.hold(self.host, [e.ref.hash])
        elif isinstance(e, Deliver):
            self.fetched[e.ref.hash] = e.data
        elif isinstance(e, HolderFault):
            layer.count(f"holder_faults_{e.reason}")
            self.faulted.setdefault(e.chunk, {})[e.holder.node] = None
            if e.reason == "missing" and e.holder.cluster == self.cluster:
                layer.drop(self.host, e.holder.node, e.chunk)
        elif isinstance(e, FetchFailed):
            layer.count(f"fetch_failed_{e.reason}")  # the read fails once the effects after it are done

    def _request(self, e: Request) -> None:
        layer, net = self.layer, self.layer.net
        rid, holder, ref = e.request_id, e.holder.node, e.ref
        self.live[rid] = e
        layer.count("chunk_requests")
        if e.holder.cluster != self.cluster:
            layer.wan_start(self, rid, ref)
        fail = lambda: self._result(rid, ChunkError(rid, "error"))  # noqa: E731

        def at_holder() -> None:
            st = layer.nodes.get(holder)
            if st is not None and ref.hash in st.store:
                net.send(holder, self.host, ref.size + CONTROL_BYTES,
                         lambda: self._result(rid, ChunkOk(rid, chunk_data(ref))), "data", on_fail=fail)
            else:
                net.send(holder, self.host, CONTROL_BYTES, lambda: self._result(rid, ChunkError(rid, "missing")),
                         "control", on_fail=fail)

        net.send(self.host, holder, CONTROL_BYTES, at_holder, "control", on_fail=fail)

    def _result(self, rid: int, msg: ChunkOk | ChunkError) -> None:
        req = self.live.pop(rid, None)
        if req is None or self.finished or self.planner is None:
            return  # cancelled: a late answer is ignored
        self.layer.wan_end(self, rid, req.ref.hash)
        self.planner.receive(msg, self.layer.engine.now)
        self.pump()

    def _lookup(self) -> None:
        if self.finished:
            return
        chunks, self.need = sorted(self.need), {}
        self.layer.count("need_holders_lookups")

        def found(got: dict[str, list[Host]]) -> None:
            if self.finished or self.planner is None:
                return
            now = self.layer.engine.now
            for chunk in chunks:
                fresh = [h for h in got.get(chunk, []) if h.node not in self.told[chunk]]
                self.told[chunk].update(h.node for h in fresh)
                if fresh:
                    self.planner.add_holders(chunk, fresh, now)
                else:
                    self.planner.no_more_holders(chunk, now)
            self.pump()

        self.layer.lookup(self.host, chunks, found, own_first=False)

    def finish(self, ok: bool) -> None:
        if self.finished:
            return
        self.finished = True
        layer = self.layer
        if self.timer is not None:
            self.timer.cancel()
        for rid, req in list(self.live.items()):
            layer.wan_end(self, rid, req.ref.hash)
        self.live.clear()
        layer.reads.pop(self.id, None)
        st = layer.nodes.get(self.host)
        if st is not None:
            st.reads.pop(self.id, None)
            lost = [h for h, r in st.fetching.items() if r is self]
            for h in lost:  # what this read did not fetch fails the reads waiting for it
                del st.fetching[h]
            for r in list(st.reads.values()):
                if r.waiting & set(lost):
                    r.finish(False)
        if ok:  # what the reader is given: fetched bytes, or its own copies (read from its disk)
            m = self.manifest
            given = tuple(chunk_ref_of(self.fetched[c.hash]) if c.hash in self.fetched else chunk_ref_of(chunk_data(c))
                          for c in m.chunks)
            layer.ctx.checker.on_read(layer.engine.now, self.started, m.key, m.version, given)
        self.done(ok)
