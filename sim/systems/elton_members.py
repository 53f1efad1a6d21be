"""Elton's failure detector in the simulator: a real ``mesh.core.membership.Membership`` core on every host.

As in ``eltond``, every host gossips (masters with role ``master``, the others with role ``node``,
each with its cluster in its certificate). Each core is pumped by ``SimHost`` with the adapter of
the ``gossip`` study (``sim.gossip.MemberPort``): its datagrams travel over the simulated network
with their msgpack size plus the signed envelope (category ``gossip``, lossy, dropped when a side is
down or cut off), its push-pulls as a sized reliable exchange of ``local_state()`` (category
``push_pull``), merged by both sides as ``mesh.runtime.gossip`` does.

The mesh starts converged (every core has merged the full member list; the hosts were started at
random instants in the second before, so their timers are not in phase). A crashed host's core
stops (no timer, what arrives is dropped); a restarted host starts a new core with the next
incarnation, knowing only the certificates and itself, and push-pulls with up to ``REJOIN_PEERS``
of the masters it knew (``GossipService._rejoin``), so the others see it alive again by its higher
incarnation.

Each core's events (``drain_events()``) go to ``on_event(observer_host, event)``; ``alive(observer,
node)`` answers from that host's core (alive or suspect counts as live, as ``mesh.runtime.holders``
and ``mesh.runtime.issuance`` count it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blake3

from mesh.core.admission import AdmissionState, Certificate, issue_certificate
from mesh.core.codec import pack
from mesh.core.identity import Identity
from mesh.core.membership import (
    Config,
    Datagram,
    MemberEvent,
    Membership,
    MemberState,
    PushPull,
    StartPushPull,
)
from mesh.core.membership.messages import Addr, MemberRecord
from sim.gossip import PORT, PROFILES, MemberPort, push_pull
from sim.host import SimHost
from sim.scenario import ScenarioError
from sim.systems.base import Context

LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
REJOIN_PEERS = 3
CATEGORIES = ("gossip", "push_pull")  # the ledger categories of membership traffic


class MembershipLayer:
    def __init__(self, ctx: Context, identities: dict[str, Identity], profile: str,
                 on_event: Callable[[str, MemberEvent], None]) -> None:
        if profile not in PROFILES:
            raise ScenarioError(f"elton.gossip_profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        self.ctx = ctx
        self.engine = ctx.engine
        self.net = ctx.net
        self.config: Config = PROFILES[profile]()
        self.profile = profile
        self.on_event = on_event
        seed = ctx.engine.seed
        self.admin = Identity(blake3.blake3(f"{seed}:elton:admin".encode()).digest())
        self.node_of = {h: i.node_id for h, i in identities.items()}
        self.host_of = {i.node_id: h for h, i in identities.items()}
        self.addr_of: dict[str, Addr] = {nid: (h, PORT) for h, nid in self.node_of.items()}
        self.node_at: dict[Addr, str] = {a: nid for nid, a in self.addr_of.items()}
        self.certs: dict[str, Certificate] = {}
        for h in ctx.hosts:
            ident = identities[h.name]
            self.certs[ident.node_id] = issue_certificate(self.admin, ident.public_key, h.cluster,
                                                          "master" if h.master else "node", 0.0)
        self.incarnation: dict[str, int] = {h.name: 1 for h in ctx.hosts}
        self.sim_hosts: dict[str, SimHost] = {}  # node id -> its SimHost
        self.cores_started = 0
        self.push_pulls = 0

    # ---- cores ---------------------------------------------------------------------------

    def _core(self, host: str, now: float) -> Membership:
        nid = self.node_of[host]
        h = self.net.hosts[host]
        return Membership(node_id=nid, cluster=h.cluster, role="master" if h.master else "node",
                          gossip=self.addr_of[nid], http=f"http://{host}:8080", incarnation=self.incarnation[host],
                          admission=AdmissionState(self.admin.public_key, dict(self.certs)), config=self.config,
                          rng=self.engine.rng(f"membership:{host}:{self.incarnation[host]}"), now=now)

    def _size(self, msg: Datagram) -> int:
        return len(pack(msg.to_wire()))

    def _run(self, host: str, core: Membership) -> SimHost:
        nid = self.node_of[host]
        sh = self.sim_hosts.get(nid)
        port = MemberPort(core, self.node_at, self.addr_of)
        self.cores_started += 1
        if sh is None:
            sh = SimHost(self.engine, self.net, host, nid, port, self.host_of.get, self._size,
                         lambda eff, h=host: self._effect(h, eff), "gossip", self.sim_hosts, reliable=False)
            self.sim_hosts[nid] = sh
        else:
            sh.replace_core(port)
        return sh

    def start(self) -> None:
        """A converged, quiet mesh: every core knows every host, nothing left to gossip."""
        hosts = [h.name for h in self.ctx.hosts]
        view = PushPull(tuple(MemberRecord(self.node_of[h], 1, "alive", self.addr_of[self.node_of[h]],
                                           f"http://{h}:8080") for h in hosts), (), ())
        started = self.engine.rng("membership:start")
        for host in hosts:
            born = -started.uniform(0.0, 1.0)
            core = self._core(host, born)
            core.merge_state(self.node_of[host], view, born)
            while len(core.queue):
                core.queue.take(len(hosts), 1 << 30, lambda u: 1)
            core.drain_events()
            core.drain()
            self._run(host, core)
        for sh in self.sim_hosts.values():
            sh.pump()

    def core(self, host: str) -> Membership | None:
        sh = self.sim_hosts.get(self.node_of[host])
        return None if sh is None else sh.core.core

    # ---- what a host's core says ------------------------------------------------------------

    def alive(self, observer: str, node: str) -> bool:
        """Is ``node`` (a host name) live in ``observer``'s view? A host always sees itself live."""
        if observer == node:
            return True
        if not self.net.hosts[observer].up:
            return False
        core = self.core(observer)
        m = None if core is None else core.member(self.node_of[node])
        return m is not None and m.state in LIVE

    # ---- crashes and restarts ---------------------------------------------------------------

    def host_changed(self, host: str, up: bool) -> None:
        nid = self.node_of[host]
        if not up:
            self.sim_hosts[nid].crash()
            return
        self.incarnation[host] += 1  # eltond keeps its incarnation on disk and starts the next one
        self._run(host, self._core(host, self.engine.now))
        me = self.net.hosts[host]
        peers = [h.name for h in self.ctx.hosts if h.master and h.name != host]
        peers.sort(key=lambda p: (self.net.hosts[p].cluster != me.cluster, self.node_of[p]))
        for p in peers[:REJOIN_PEERS]:
            self._push_pull(host, self.node_of[p])

    # ---- effects ---------------------------------------------------------------------------

    def _effect(self, host: str, effect: Any) -> None:
        if isinstance(effect, MemberEvent):
            if effect.member.id in self.host_of:
                self.on_event(host, effect)
        elif isinstance(effect, StartPushPull):
            self._push_pull(host, effect.node)

    def _push_pull(self, host: str, node: str) -> None:
        me = self.sim_hosts[self.node_of[host]]
        peer = self.sim_hosts.get(node)
        if peer is None or not me.up:
            return
        self.push_pulls += 1
        push_pull(self.net, me, peer)

    def report(self) -> dict[str, Any]:
        led = self.net.ledger
        members = len(self.ctx.hosts)
        dur = max(self.engine.now, 1e-9)
        total = sum(led.by_category.get(c, 0) for c in CATEGORIES)
        return {
            "mode": "real", "profile": self.profile, "members": members, "cores_started": self.cores_started,
            "datagrams_sent": sum(sh.sent for sh in self.sim_hosts.values()), "push_pulls": self.push_pulls,
            "datagram_bytes": led.by_category.get("gossip", 0), "push_pull_bytes": led.by_category.get("push_pull", 0),
            "wan_bytes": sum(led.wan_by_category.get(c, 0) for c in CATEGORIES),
            "bytes_per_member_per_s": round(total / members / dur, 3),
        }
