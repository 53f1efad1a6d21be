"""Elton in the simulator: the real sans-IO cores on simulated hosts.

What runs for real (the same code as ``eltond``), named in the report under ``systems.elton.cores``:
- ``dht.Placement``: which masters hold a key's counter (home first);
- ``mesh.core.issuance.Issuer`` on every master, pumped by ``SimHost``: commits, the replicated
  counter, signed manifests, persistence records (kept per host and handed back on restart);
- ``mesh.core.fetch.FetchPlanner``, one per read, ``mesh.core.fetch.WanCoalescer`` and
  ``mesh.core.holders.HolderIndex`` on each cluster's coalescing master, and a
  ``mesh.core.holders.HolderReporter`` on every host that holds chunks, wired as
  ``mesh.runtime.fetch`` and ``mesh.runtime.holders`` wire them (``sim/systems/elton_fetch.py``);
- ``mesh.core.costs.CostModel``: the expected cost (price, RTT, bandwidth EWMA) by which the
  planner ranks holders, one per reading cluster;
- ``mesh.core.membership.Membership`` on every host, masters and nodes (``sim/systems/elton_members.py``),
  when the scenario has at most ``REAL_MEMBERSHIP_MAX_HOSTS`` hosts (``[elton] membership = "auto"``,
  the default; ``"real"`` or ``"model"`` force it): probes, gossip and push-pulls travel the simulated
  network (categories ``gossip`` and ``push_pull``, counted in the bytes and WAN bytes and reported
  apart as the gossip overhead). Who is alive comes from each host's core events, as eltond's services
  read them: each master's ``Issuer.set_live`` (the masters alive or suspect in its view), the
  cluster's coalescing master (lowest live master id in the view of the cluster's lowest running
  master, the one view that stands for the cluster's), ``HolderIndex.forget`` and
  ``WanCoalescer.forget`` on the coalescing master when its core says dead or left, ``touch`` of the
  nodes its core sees live, ``FetchPlanner.holder_dead`` (and the bandwidth estimate's ``forget``) on
  the readers whose core says so, the home a master sends a read to, and the holders a reader is told.
  A crashed host's core stops; a restarted one starts the next incarnation and push-pulls with up to
  three masters. A real detector is slower than a crash and can be wrong: the invariant checker's
  oracle stays the simulator's ground truth.

What is modelled: the failure detector above ``REAL_MEMBERSHIP_MAX_HOSTS`` hosts (``scale``, ``image-rollout``)
or with ``membership = "model"`` (the simulator's host up/down state, seen at once by the index, the
coalescer, the planners and the issuers); which master a client talks to (its cluster's first running
master); Vivaldi (RTTs are the scenario's latencies); and the home's answer to "latest version of this
key" (a directory of acknowledged manifests).

The data path: a writer keeps its chunks (it becomes their holder and reports them to its
cluster's master) and sends only the draft to its cluster's master, which submits it to its
Issuer. A reader asks its master for the latest manifest (one round trip to the home); the
chunks its disk lacks go to a FetchPlanner, which takes each from the cheapest holder it learns
of (its own cluster's master first, then the other clusters' masters, and the manifest's author),
claims a WAN pull at its cluster's master so that concurrent misses make one transfer, verifies
every chunk by hash and size, and becomes a holder of what it fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blake3

from dht.placement import Master, Placement
from mesh.core.codec import pack
from mesh.core.costs import CostModel, LinkClass, PriceTable
from mesh.core.fetch import FetchConfig
from mesh.core.identity import Identity
from mesh.core.manifest import Draft, Manifest
from mesh.core.membership import MemberEvent
from sim.content import content_hash
from sim.host import SimHost
from sim.scenario import ScenarioError
from sim.systems.base import CHUNK_REF_BYTES, CONTROL_BYTES, Context, Done, System
from sim.systems.elton_fetch import HEARTBEAT, FetchLayer
from sim.systems.elton_members import MembershipLayer
from sim.workload import Op

try:  # the issuance core is being written in parallel; say so in the report if it is absent
    from mesh.core.issuance import Done as IssuerDone
    from mesh.core.issuance import Issuer, IssuerConfig, message_to_wire
    from mesh.core.issuance import Persist as IssuerPersist
    HAVE_ISSUER = True
except ImportError:  # pragma: no cover - depends on the state of the tree
    HAVE_ISSUER = False


REAL_MEMBERSHIP_MAX_HOSTS = 200  # "auto": real membership cores up to this many hosts, the model above
MEMBERSHIP_MODES = ("auto", "real", "model")


def membership_mode(ctx: Context) -> str:
    """``[elton] membership``: "real" (a Membership core on every host), "model" (the simulator's
    up/down state, seen at once) or "auto" (real up to REAL_MEMBERSHIP_MAX_HOSTS hosts)."""
    mode = str(ctx.scenario.elton.get("membership", "auto"))
    if mode not in MEMBERSHIP_MODES:
        raise ScenarioError(f"elton.membership must be one of {', '.join(MEMBERSHIP_MODES)}, not {mode!r}")
    if mode == "auto":
        return "real" if len(ctx.hosts) <= REAL_MEMBERSHIP_MAX_HOSTS else "model"
    return mode


def price_table(ctx: Context) -> PriceTable:
    """The real cost model's price table, built from the scenario's link classes and prices."""
    sc = ctx.scenario
    costs: dict[str, Any] = {c: p for c, p in sc.prices.items() if c in {k.value for k in LinkClass}}
    costs["pairs"] = {f"{s.a}/{s.b}": s.link_class for s in sc.links if s.a < s.b}
    costs.update({k: v for k, v in sc.elton.get("costs", {}).items()})
    return PriceTable.from_config(costs)


class EltonSystem(System):
    name = "elton"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg = ctx.scenario.elton
        self.replicas = int(cfg.get("replicas", 3))
        self.replica_scope = str(cfg.get("replica_scope", "mesh"))
        self.vnodes = int(cfg.get("vnodes", 128))  # ring points per master, for placement and issuance
        self.masters: dict[str, str] = {}  # node id -> host name
        self.node_of: dict[str, str] = {}  # host name -> node id
        self.identities: dict[str, Identity] = {}
        self.mode = membership_mode(ctx)
        for h in ctx.hosts:
            if h.master or self.mode == "real":  # every host gossips; only masters need one in the model
                seed = blake3.blake3(f"{ctx.engine.seed}:identity:{h.name}".encode()).digest()
                self.identities[h.name] = Identity(seed)
            if h.master:
                ident = self.identities[h.name]
                self.masters[ident.node_id] = h.name
                self.node_of[h.name] = ident.node_id
        self.roster = [Master(nid, ctx.net.hosts[hn].cluster) for nid, hn in sorted(self.masters.items())]
        self.placement = Placement(self.roster, self.vnodes)
        self.sim_hosts: dict[str, SimHost] = {}
        self.records: dict[str, list[Any]] = {h: [] for h in self.node_of}
        self.pending: dict[str, Callable[[Any], None]] = {}  # request id -> done callback
        self.directory: dict[str, Manifest] = {}  # key -> newest acknowledged manifest
        self._requests = 0
        self.cost_models: dict[str, CostModel] = {}  # per reading cluster (its nodes share estimates)
        self.table = price_table(ctx)
        order: dict[str, list[str]] = {c: [] for c in ctx.scenario.cluster_names()}
        for _nid, hn in sorted(self.masters.items()):  # the coalescing master: lowest node id first
            order[ctx.net.hosts[hn].cluster].append(hn)
        self.heartbeat = float(cfg.get("holder_heartbeat_s", HEARTBEAT))
        self.fetch = FetchLayer(ctx, order, self._model, FetchConfig(), self.heartbeat)
        self.members: MembershipLayer | None = None
        self._live_sent: dict[str, tuple[str, ...]] = {}  # master -> the live set its Issuer was last given
        if self.mode == "real":
            self.members = MembershipLayer(ctx, self.identities, str(cfg.get("gossip_profile", "lan")),
                                           self._member_event)
            self.fetch.view = self.members.alive

    # ---- masters and their cores ---------------------------------------------------------

    def _issuer(self, host: str) -> Any:
        config = IssuerConfig(replicas=self.replicas, replica_scope=self.replica_scope, vnodes=self.vnodes)
        rng = self.ctx.engine.rng(f"issuer:{host}")
        iss = Issuer(self.identities[host], config, rng, records=list(self.records[host]))
        iss.set_roster(1, self.roster, self.ctx.engine.now)
        live = self._live_masters(host)
        self._live_sent[host] = tuple(live)
        iss.set_live(live, self.ctx.engine.now)
        return iss

    def _alive(self, observer: str, host: str) -> bool:
        """Is ``host`` live in ``observer``'s view (its membership core; the model: ground truth)?"""
        if self.members is None:
            return self.ctx.net.hosts[host].up
        return self.members.alive(observer, host)

    def _live_masters(self, observer: str) -> list[str]:
        return [nid for nid, hn in self.masters.items() if self._alive(observer, hn)]

    def _member_event(self, observer: str, event: MemberEvent) -> None:
        """An event of ``observer``'s membership core, handled as eltond's services handle it."""
        assert self.members is not None
        node = self.members.host_of[event.member.id]
        if event.kind in ("dead", "left", "removed"):
            self.fetch.member_dead(observer, node)
        else:
            self.fetch.member_changed(observer, node)
        if node in self.node_of and observer in self.node_of and HAVE_ISSUER:  # a master, seen by a master
            sh = self.sim_hosts.get(self.node_of[observer])
            live = self._live_masters(observer)
            if sh is not None and sh.up and tuple(live) != self._live_sent.get(observer):
                self._live_sent[observer] = tuple(live)
                sh.call(sh.core.set_live, live)

    def start(self) -> None:
        if self.members is not None:
            self.members.start()
        if not HAVE_ISSUER:
            return
        for host, nid in self.node_of.items():
            self.sim_hosts[nid] = SimHost(
                self.ctx.engine, self.ctx.net, host, nid, self._issuer(host), self.masters.get,
                lambda m: len(pack(message_to_wire(m))), lambda eff, h=host: self._effect(h, eff),
                "issuance", self.sim_hosts)
        for sh in self.sim_hosts.values():
            sh.pump()

    def _effect(self, host: str, effect: Any) -> None:
        if isinstance(effect, IssuerPersist):
            self.records[host].extend(effect.records)
        elif isinstance(effect, IssuerDone):
            cb = self.pending.pop(effect.request_id, None)
            if cb is not None:
                cb(effect)

    def host_changed(self, host: Any) -> None:
        if self.members is not None:  # real membership: the others learn of it from their cores
            self.members.host_changed(host.name, host.up)
            self.fetch.process_changed(host.name, host.up)
        else:
            self.fetch.host_changed(host.name, host.up)
        if not host.master or not HAVE_ISSUER:
            return
        nid = self.node_of[host.name]
        if host.up:
            self.sim_hosts[nid].replace_core(self._issuer(host.name))
        else:
            self.sim_hosts[nid].crash()
        if self.members is not None:
            return
        for other, hn in self.masters.items():
            sh = self.sim_hosts[other]
            if other != nid and sh.up:
                live = self._live_masters(hn)
                self._live_sent[hn] = tuple(live)
                sh.call(sh.core.set_live, live)

    # ---- commits ---------------------------------------------------------------------------

    def write(self, op: Op, done: Done) -> None:
        ctx = self.ctx
        cluster = op.host.split("/")[0]
        master = ctx.master_of(cluster)
        if master is None or not HAVE_ISSUER:
            done(False, 0)
            return
        # the writer keeps its chunks (reported to its master as held): nothing leaves the cluster
        self.fetch.hold(op.host, [c.hash for c in op.chunks])
        draft = Draft(op.key, op.size, content_hash(op.chunks), op.chunks, author=op.host)
        self._requests += 1
        request_id = f"r{self._requests}"
        draft_bytes = CONTROL_BYTES + CHUNK_REF_BYTES * len(op.chunks)

        def finished(effect: Any) -> None:
            m = effect.manifest
            if m is None:
                ctx.count("commit_errors")
                ctx.net.send(master, op.host, CONTROL_BYTES, lambda: done(False, 0), "control")
                return
            ctx.checker.on_issue(ctx.engine.now, m.key, m.version, m.content_hash, m.chunks)
            old = self.directory.get(m.key)
            if old is None or old.version < m.version:
                self.directory[m.key] = m
            ctx.net.send(master, op.host, draft_bytes, lambda: done(True, m.version), "control",
                         on_fail=lambda: done(False, 0))

        def submit() -> None:
            self.pending[request_id] = finished
            sh = self.sim_hosts[self.node_of[master]]
            sh.call(sh.core.submit, request_id, draft, None)

        ctx.net.send(op.host, master, draft_bytes, submit, "control", on_fail=lambda: done(False, 0))

    # ---- reads -----------------------------------------------------------------------------

    def _home_host(self, key: str, master: str) -> str | None:
        """The first replica of ``key`` live in ``master``'s view."""
        for nid in self.placement.replicas(key, self.replicas, self.replica_scope):
            hn = self.masters[nid]
            if self._alive(master, hn):
                return hn
        return None

    def read(self, op: Op, done: Done) -> None:
        ctx = self.ctx
        cluster = op.host.split("/")[0]
        master = ctx.master_of(cluster)
        home = None if master is None else self._home_host(op.key, master)
        if master is None or home is None:
            done(False, 0)
            return
        fail = lambda: done(False, 0)  # noqa: E731

        def at_home() -> None:
            m = self.directory.get(op.key)
            size = CONTROL_BYTES + (CHUNK_REF_BYTES * len(m.chunks) if m else 0)
            ctx.net.send(home, master, size, lambda: at_master(m), "control", on_fail=fail)

        def at_master(m: Manifest | None) -> None:
            size = CONTROL_BYTES + (CHUNK_REF_BYTES * len(m.chunks) if m else 0)
            ctx.net.send(master, op.host, size, lambda: fetch(m) if m else fail(), "control", on_fail=fail)

        def fetch(m: Manifest) -> None:
            if not ctx.net.hosts[op.host].up:
                fail()
                return
            self.fetch.read(op.host, m, op.at, lambda ok: done(ok, m.version if ok else 0))

        ctx.net.send(op.host, master, CONTROL_BYTES,
                     lambda: ctx.net.send(master, home, CONTROL_BYTES, at_home, "control", on_fail=fail),
                     "control", on_fail=fail)

    def _model(self, cluster: str) -> CostModel:
        m = self.cost_models.get(cluster)
        if m is None:
            net = self.ctx.net

            def rtt(a: str, b: str) -> float:  # stands in for Vivaldi: the scenario's latency, both ways
                return 2 * net.link(net.hosts[a], net.hosts[b]).latency_s

            m = self.cost_models[cluster] = CostModel(self.table, rtt=rtt)
        return m

    def report(self) -> dict[str, Any]:
        cores = {
            "placement": "real: dht.Placement",
            "issuance": "real: mesh.core.issuance.Issuer via SimHost" if HAVE_ISSUER else "absent: commits fail",
            "membership": (f"real: a mesh.core.membership.Membership core on each of the {len(self.ctx.hosts)} hosts"
                           f" (profile {self.members.profile}), datagrams and push-pulls over the simulated network;"
                           " its events feed the issuers' live sets, the coalescing master's election, the holder"
                           " index and coalescer (forget, touch) and the planners (holder_dead)"
                           if self.members is not None else
                           f"modelled ([elton] membership = {self.ctx.scenario.elton.get('membership', 'auto')!r},"
                           f" {len(self.ctx.hosts)} hosts): the simulator's host up/down state stands in for the"
                           " failure detector (a crash is seen at once by the index, the coalescer, the planners and"
                           " the issuers)"),
            "holder index": "real: mesh.core.holders.HolderIndex on each cluster's coalescing master, fed by a"
                            " HolderReporter on every host that holds chunks (reports are simulated messages);"
                            " VersionHolders is not wired (eltond does not use it either)",
            "fetch planner": "real: one mesh.core.fetch.FetchPlanner per read (holders looked up at the masters,"
                             " effects carried out over the simulated network, chunks verified by hash and size)",
            "WAN coalescing": "real: mesh.core.fetch.WanCoalescer on each cluster's coalescing master",
            "cost model": "real: mesh.core.costs.CostModel (PriceTable from the scenario, bandwidth EWMA"
                          " fed by every simulated transfer) ranks the holders",
            "vivaldi": "not wired: RTTs given to the cost model are the scenario's link latencies",
        }
        sent = sum(sh.sent for sh in self.sim_hosts.values())
        members = {"mode": "model"} if self.members is None else self.members.report()
        return {"cores": cores, "issuance_messages": sent, "fetch": self.fetch.report(), "membership": members}
