"""Membership study: the real SWIM cores (``mesh.core.membership.Membership``) of every master on
the simulated network, and how fast a membership change reaches them.

Every master runs the production core, pumped by ``SimHost``: probes, acks, indirect probes,
piggybacked gossip over lossy datagrams, suspicion and push-pull (a reliable exchange of
``local_state()``, merged by both sides as the runtime does). The mesh starts converged and quiet
(every core has merged the full member list and its broadcast queue has been sent out; each was
started at a random instant in the second before, so their timers are not in phase); then,
as the scenario's ``[gossip]`` table says, one master is killed and a new one joins (a push-pull
with a seed master, as ``eltond join`` does). The study records when each master's core emits
the event about it and reports the time to reach ``quantile`` of the masters, next to the
SWIM/Serf epidemic model, and the gossip bytes each master sends per second.

One shortcut, which changes CPU only: certificates a receiver already holds identically are left
out of the push-pull state handed to ``merge_state`` (re-adding one is a no-op after an ed25519
verify); the bytes on the simulated wire are those of the full state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
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
    PushPull,
    SendDatagram,
    StartPushPull,
)
from mesh.core.membership.config import push_pull_interval
from mesh.core.membership.messages import Addr, MemberRecord
from sim.engine import Engine
from sim.host import ENVELOPE_BYTES, SimHost
from sim.network import Host, Ledger, LinkSpec, Network
from sim.scenario import Scenario, ScenarioError

PORT = 7946
SERF_MODEL = {"nodes": 1000, "gossip_interval_s": 0.2, "fanout": 3, "quantile": 0.9999, "seconds": 2.2}
PROFILES: dict[str, Callable[[], Config]] = {"lan": Config.lan, "wan": Config.wan, "local": Config.local}



def state_size(state: PushPull) -> int:
    """Bytes of a push-pull state on the wire, in its signed envelope."""
    return len(pack(state.to_wire())) + ENVELOPE_BYTES


def state_for(state: PushPull, receiver: SimHost) -> PushPull:
    """Certificates the receiver holds identically are left out (CPU only: the wire size is the full state)."""
    held = receiver.core.core.admission.certificates
    fresh = tuple(c for c in state.certificates if held.get(c.node_id) != c)
    return PushPull(state.members, fresh, state.revocations)


def push_pull(net: Network, me: SimHost, peer: SimHost, on_exchange: Callable[[int], None] | None = None) -> None:
    """The runtime's TCP exchange: send our state, the peer merges it and answers with its own;
    ``on_exchange`` gets the bytes of both directions once the answer arrives."""
    mine = me.core.core.local_state()
    out_size = state_size(mine)

    def at_peer() -> None:
        if not peer.up:
            return
        peer.call(peer.core.core.merge_state, me.node_id, state_for(mine, peer))
        theirs = peer.core.core.local_state()
        back_size = state_size(theirs)

        def back() -> None:
            if on_exchange is not None:
                on_exchange(out_size + back_size)
            if me.up:
                me.call(me.core.core.merge_state, peer.node_id, state_for(theirs, me))

        net.send(peer.host, me.host, back_size, back, "push_pull")

    net.send(me.host, peer.host, out_size, at_peer, "push_pull")


@dataclass(frozen=True)
class GossipSpec:
    profile: str = "lan"
    quantile: float = 0.9999
    kill_at: float | None = 4.0  # one master (the last of the last cluster) is killed
    join_at: float | None = 14.0  # a new master joins the first cluster
    quiet: tuple[float, float] = (1.0, 4.0)  # window of steady-state traffic (no change under way)

    @classmethod
    def from_scenario(cls, sc: Scenario) -> GossipSpec:
        g = sc.gossip
        if g is None:
            raise ScenarioError(f"scenario {sc.name!r} has no [gossip] table")
        unknown = set(g) - {"profile", "quantile", "kill_at", "join_at", "quiet"}
        if unknown:
            raise ScenarioError(f"unknown gossip field(s): {', '.join(sorted(unknown))}")
        profile = str(g.get("profile", "lan"))
        if profile not in PROFILES:
            raise ScenarioError(f"gossip.profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        q = float(g.get("quantile", 0.9999))
        if not 0 < q <= 1:
            raise ScenarioError("gossip.quantile must be in (0, 1]")
        quiet = tuple(float(x) for x in g.get("quiet", [1.0, 4.0]))
        if len(quiet) != 2 or not 0 <= quiet[0] < quiet[1]:
            raise ScenarioError("gossip.quiet must be [start, end] with start < end")
        kill = g.get("kill_at", 4.0)
        join = g.get("join_at", 14.0)
        return cls(profile, q, None if kill is None or kill < 0 else float(kill),
                   None if join is None or join < 0 else float(join), (quiet[0], quiet[1]))


@dataclass(frozen=True)
class Send:
    dest: str
    message: Datagram


class MemberPort:
    """Adapts a ``Membership`` core to ``SimHost``: node ids instead of addresses; events and
    push-pull requests come out as effects."""

    def __init__(self, core: Membership, node_at: dict[Addr, str], addr_of: dict[str, Addr]) -> None:
        self.core = core
        self.node_at = node_at
        self.addr_of = addr_of

    def receive(self, sender: str, msg: Datagram, now: float) -> None:
        self.core.receive(sender, self.addr_of[sender], msg, now)

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)

    def next_deadline(self) -> float | None:
        return self.core.next_deadline()

    def drain(self) -> list[Any]:
        out: list[Any] = []
        for o in self.core.drain():
            if isinstance(o, SendDatagram):
                node = self.node_at.get(o.addr)
                if node is not None:
                    out.append(Send(node, o.datagram))
            else:
                out.append(o)
        out.extend(self.core.drain_events())
        return out


@dataclass
class Watch:
    """When each observer's core first said ``kinds`` about one member."""

    node: str
    kinds: frozenset[str]
    seen: dict[str, float] = field(default_factory=dict)


def model_seconds(n: int, fanout: int, interval: float, quantile: float) -> float:
    """Mean-field push epidemic: each informed member tells ``fanout`` random members a round."""
    uninformed = 1.0 - 1.0 / n
    rounds = 0
    while 1.0 - uninformed < quantile and rounds < 1000:
        uninformed *= math.exp(-fanout * (1.0 - uninformed))
        rounds += 1
    return rounds * interval


def quantile_time(seen: dict[str, float], observers: int, q: float, start: float) -> float | None:
    """Time after ``start`` by which ``q`` of ``observers`` had seen it (None: never)."""
    need = max(1, math.ceil(q * observers - 1e-9))
    times = sorted(seen.values())
    return None if len(times) < need else round(times[need - 1] - start, 6)


class GossipStudy:
    def __init__(self, sc: Scenario, seed: int) -> None:
        self.sc = sc
        self.spec = GossipSpec.from_scenario(sc)
        self.config = PROFILES[self.spec.profile]()
        self.engine = Engine(seed)
        names = [(c.name, i) for c in sc.clusters for i in range(c.masters)]
        joiner_cluster = sc.clusters[0].name
        self.joiner = f"{joiner_cluster}/{sc.clusters[0].masters}" if self.spec.join_at is not None else None
        hosts = [Host(f"{c}/{i}", c, i, True) for c, i in names]
        if self.joiner is not None:
            hosts.append(Host(self.joiner, joiner_cluster, sc.clusters[0].masters, True, up=False))
        self.initial = [h.name for h in hosts if h.name != self.joiner]
        self.victim = self.initial[-1] if self.spec.kill_at is not None else None
        ledger = Ledger(sc.prices, sc.bucket_s, series_hosts=False)
        lan = {c.name: LinkSpec("lan", c.lan_latency_s, c.lan_bandwidth_bps) for c in sc.clusters}
        wan = {(s.a, s.b): LinkSpec(s.link_class, s.latency_s, s.bandwidth_bps, s.loss) for s in sc.links}
        self.net = Network(self.engine, hosts, lan, wan, [], ledger, sharing=sc.sharing)
        self.admin = Identity(blake3.blake3(f"{seed}:gossip:admin".encode()).digest())
        self.ident: dict[str, Identity] = {}
        self.certs: dict[str, Certificate] = {}
        self.node_of: dict[str, str] = {}
        self.host_of: dict[str, str] = {}
        self.addr_of: dict[str, Addr] = {}
        self.node_at: dict[Addr, str] = {}
        for h in hosts:
            ident = Identity(blake3.blake3(f"{seed}:gossip:{h.name}".encode()).digest())
            self.ident[h.name] = ident
            self.certs[ident.node_id] = issue_certificate(self.admin, ident.public_key, h.cluster, "master", 0.0)
            self.node_of[h.name], self.host_of[ident.node_id] = ident.node_id, h.name
            self.addr_of[ident.node_id] = (h.name, PORT)
            self.node_at[(h.name, PORT)] = ident.node_id
        self.sim_hosts: dict[str, SimHost] = {}
        self.watches: list[Watch] = []
        self.marks: dict[str, float] = {}
        self.push_pulls = 0
        self.exchanges: list[int] = []  # bytes of each completed push-pull (both directions)

    # ---- cores ---------------------------------------------------------------------------

    def _core(self, host: str, certs: dict[str, Certificate], now: float) -> Membership:
        nid = self.node_of[host]
        return Membership(node_id=nid, cluster=self.net.hosts[host].cluster, role="master",
                          gossip=self.addr_of[nid], http=f"http://{host}:8080", incarnation=1,
                          admission=AdmissionState(self.admin.public_key, dict(certs)), config=self.config,
                          rng=self.engine.rng(f"membership:{host}"), now=now)

    def _size(self, msg: Datagram) -> int:
        return len(pack(msg.to_wire()))

    def _start_host(self, host: str, core: Membership) -> SimHost:
        nid = self.node_of[host]
        sh = SimHost(self.engine, self.net, host, nid, MemberPort(core, self.node_at, self.addr_of), self.host_of.get,
                     self._size, lambda eff, h=host: self._effect(h, eff), "gossip", self.sim_hosts, reliable=False)
        self.sim_hosts[nid] = sh
        return sh

    def start(self) -> None:
        """A converged, quiet mesh: every core knows every initial master, nothing left to gossip."""
        certs = {self.node_of[h]: self.certs[self.node_of[h]] for h in self.initial}
        view = PushPull(tuple(MemberRecord(self.node_of[h], 1, "alive", self.addr_of[self.node_of[h]],
                                           f"http://{h}:8080") for h in self.initial), (), ())
        n = len(self.initial)
        started = self.engine.rng("membership:start")
        for host in self.initial:
            born = -started.uniform(0.0, 1.0)  # masters started at different times: their timers are not in phase
            core = self._core(host, certs, born)
            core.merge_state(self.node_of[host], view, born)
            while len(core.queue):
                core.queue.take(n, 1 << 30, lambda u: 1)
            core.drain_events()
            core.drain()
            self._start_host(host, core)
        for sh in self.sim_hosts.values():
            sh.pump()

    # ---- effects ---------------------------------------------------------------------------

    def _effect(self, host: str, effect: Any) -> None:
        if isinstance(effect, MemberEvent):
            for w in self.watches:
                if effect.member.id == w.node and effect.kind in w.kinds and host not in w.seen:
                    w.seen[host] = self.engine.now
        elif isinstance(effect, StartPushPull):
            self._push_pull(host, effect.node)

    def _push_pull(self, host: str, node: str) -> None:
        me = self.sim_hosts[self.node_of[host]]
        peer = self.sim_hosts.get(node)
        if peer is None:
            return
        self.push_pulls += 1
        push_pull(self.net, me, peer, self.exchanges.append)

    # ---- the changes -------------------------------------------------------------------------

    def _kill(self) -> None:
        assert self.victim is not None
        self.marks["kill"] = self.engine.now
        self.net.hosts[self.victim].up = False
        self.sim_hosts[self.node_of[self.victim]].crash()

    def _join(self) -> None:
        assert self.joiner is not None
        self.marks["join"] = self.engine.now
        now = self.engine.now
        self.net.hosts[self.joiner].up = True
        nid = self.node_of[self.joiner]
        sh = self._start_host(self.joiner, self._core(self.joiner, {nid: self.certs[nid]}, now))
        seed = self.initial[0]
        # the join reply carries the seed's whole state (certificates included), as eltond's join does
        joined = self.sim_hosts[self.node_of[seed]].core.core.local_state()
        self.net.send(seed, self.joiner, state_size(joined),
                      lambda: sh.call(sh.core.core.merge_state, self.node_of[seed], joined), "push_pull")
        self.engine.after(0.0, lambda: self._push_pull(self.joiner, self.node_of[seed]))  # type: ignore[arg-type]

    def run(self, on_progress: Callable[[float], None] | None = None) -> dict[str, Any]:
        self.start()
        if self.victim is not None:
            vid = self.node_of[self.victim]
            self.watches += [Watch(vid, frozenset({"suspect", "dead"})), Watch(vid, frozenset({"dead"}))]
            self.engine.at(self.spec.kill_at, self._kill)  # type: ignore[arg-type]
        if self.joiner is not None:
            self.watches.append(Watch(self.node_of[self.joiner], frozenset({"joined", "alive"})))
            self.engine.at(self.spec.join_at, self._join)  # type: ignore[arg-type]
        q0, q1 = self.spec.quiet
        quiet: dict[str, int] = {}
        self.engine.at(q0, lambda: quiet.__setitem__("start", self._sent_bytes()))
        self.engine.at(q1, lambda: quiet.__setitem__("end", self._sent_bytes()))
        self.engine.run(self.sc.duration_s, on_progress)
        return self._report(quiet)

    def _sent_bytes(self) -> int:
        return self.net.ledger.by_category.get("gossip", 0)

    def _report(self, quiet: dict[str, int]) -> dict[str, Any]:
        led = self.net.ledger
        n = len(self.initial)
        q = self.spec.quantile
        dur = self.engine.now
        changes: dict[str, Any] = {}
        if self.victim is not None:
            suspect, dead = self.watches[0], self.watches[1]
            observers = n - 1
            t = self.marks.get("kill", self.spec.kill_at or 0.0)
            first_suspect = min(suspect.seen.values(), default=None)
            first_dead = min(dead.seen.values(), default=None)
            changes["kill"] = {
                "host": self.victim, "at_s": t, "observers": observers,
                "first_suspect_after_s": None if first_suspect is None else round(first_suspect - t, 6),
                "first_dead_after_s": None if first_dead is None else round(first_dead - t, 6),
                "suspect_or_dead_reached": len(suspect.seen), "dead_reached": len(dead.seen),
                "suspicion_to_quantile_s": None if first_suspect is None
                else quantile_time(suspect.seen, observers, q, first_suspect),
                "dead_to_quantile_s": None if first_dead is None else quantile_time(dead.seen, observers, q, first_dead),
                "kill_to_quantile_dead_s": quantile_time(dead.seen, observers, q, t),
            }
        if self.joiner is not None:
            w = next(x for x in self.watches if x.node == self.node_of[self.joiner])
            t = self.marks.get("join", self.spec.join_at or 0.0)
            observers = n - (1 if self.victim is not None else 0)
            changes["join"] = {"host": self.joiner, "at_s": t, "observers": observers, "reached": len(w.seen),
                               "join_to_quantile_s": quantile_time(w.seen, observers, q, t)}
        gossip_b = led.by_category.get("gossip", 0)
        pp_b = led.by_category.get("push_pull", 0)
        q0, q1 = self.spec.quiet
        steady = (quiet.get("end", 0) - quiet.get("start", 0)) / n / (q1 - q0) if "end" in quiet else None
        cfg = self.config
        return {
            "masters": n, "clusters": len(self.sc.clusters), "profile": self.spec.profile, "quantile": q,
            "simulated_s": dur,
            "config": {"gossip_interval_s": cfg.gossip_interval, "gossip_nodes": cfg.gossip_nodes,
                       "probe_interval_s": cfg.probe_interval, "cross_gossip_interval_s": cfg.cross_gossip_interval,
                       "cross_gossip_nodes": cfg.cross_gossip_nodes, "push_pull_interval_s": cfg.push_pull_interval,
                       "retransmit_mult": cfg.retransmit_mult, "suspicion_mult": cfg.suspicion_mult},
            "changes": changes,
            "bytes": {
                "datagram_bytes": gossip_b, "push_pull_bytes": pp_b, "push_pulls": self.push_pulls,
                "datagram_bytes_per_master_per_s": round(gossip_b / n / dur, 3),
                "push_pull_bytes_per_master_per_s": round(pp_b / n / dur, 3),
                "total_bytes_per_master_per_s": round((gossip_b + pp_b) / n / dur, 3),
                "quiet_datagram_bytes_per_master_per_s": None if steady is None else round(steady, 3),
                # each master starts one push-pull per interval: the steady rate, from the measured sizes
                "push_pull_exchange_bytes_mean": round(sum(self.exchanges) / len(self.exchanges), 1)
                if self.exchanges else None,
                "steady_push_pull_bytes_per_master_per_s": round(
                    sum(self.exchanges) / len(self.exchanges) / push_pull_interval(cfg, n), 3) if self.exchanges else None,
                "push_pull_interval_s": push_pull_interval(cfg, n),
                "wan_bytes": led.wan_bytes(),
                "dropped": dict(sorted(led.dropped.items())),
            },
            "model": {
                "serf_published": SERF_MODEL,
                "mean_field_push_s": round(model_seconds(n, cfg.gossip_nodes, cfg.gossip_interval, q), 6),
            },
            "events": self.engine.events_run,
        }


def run_gossip(sc: Scenario, seed: int, on_progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    return GossipStudy(sc, seed).run(on_progress)
