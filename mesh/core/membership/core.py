"""The membership core: SWIM with Lifeguard, sans-IO.

Feed it decoded datagrams (``receive``), wake it at ``next_deadline()`` (``handle_timer``),
and send what ``drain()`` returns: ``SendDatagram`` over UDP, ``StartPushPull`` as a TCP
exchange of ``local_state()`` whose answer goes to ``merge_state``. Membership changes come
out of ``drain_events()``. Members of our own cluster form the local pool (probed and gossiped
to often); members of other clusters form the cross pool (less often, fewer targets, fewer updates).

The runtime checks signatures, admission and replays before calling ``receive``; ``sender`` is
the verified node id of the envelope's signer.

Vivaldi coordinates (``mesh.core.vivaldi``): each direct ack carries the target's coordinate, and
its measured round trip moves ours (``Coordinates.observe``); pings, relayed acks and push-pull
records tell us the coordinates of members we do not probe ourselves. ``rtt(a, b)`` estimates
the round trip of any pair of members from them.

A member of an older version drops a ping or ack of the new shape, so: a ping carries our
coordinate only to a member we hold a coordinate of (it gossiped one: it speaks them), an ack
carries one only if the ping it answers did, and push-pull carries them under a key older
members ignore (that is how two new members first learn of each other's). A member that does
not answer a ping that carried a coordinate gets plain pings from then on (it may have been
downgraded), until it sends us a coordinate itself.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from mesh.core.admission import AdmissionState
from mesh.core.codec import pack
from mesh.core.membership.awareness import Awareness
from mesh.core.membership.config import Config, push_pull_interval
from mesh.core.membership.messages import (
    Ack,
    Addr,
    Alive,
    CertUpdate,
    Control,
    Datagram,
    Dead,
    MemberRecord,
    Nack,
    Ping,
    PingReq,
    PushPull,
    RevokeUpdate,
    Suspect,
    Update,
)
from mesh.core.membership.queue import BroadcastQueue
from mesh.core.membership.state import (
    Member,
    MemberInfo,
    MemberState,
    alive_wins,
    dead_wins,
    observe_rtt,
    suspect_wins,
)
from mesh.core.membership.suspicion import expected_confirmations, suspicion_deadline, suspicion_timeouts
from mesh.core.vivaldi import MAX_RTT_SAMPLE, Coordinate, Coordinates, VivaldiConfig
from mesh.errors import ProtocolError

LOCAL, CROSS = "local", "cross"
POOLS = (LOCAL, CROSS)


@dataclass(frozen=True)
class SendDatagram:
    addr: Addr
    datagram: Datagram


@dataclass(frozen=True)
class StartPushPull:
    """Open a TCP push-pull with ``node`` at ``addr``: send ``local_state()``, merge the answer."""

    addr: Addr
    node: str


Outgoing = SendDatagram | StartPushPull


@dataclass(frozen=True)
class MemberEvent:
    """kind: joined, updated, suspect, alive (refuted), dead, left, removed (reaped or revoked)."""

    kind: str
    member: MemberInfo


@dataclass
class _Probe:
    pool: str
    target: str
    addr: Addr
    probe: int
    sent: float
    deadline: float
    indirect: bool = False
    helpers: tuple[str, ...] = ()
    nacks: int = 0
    coordinated: bool = False  # our ping carried a coordinate


@dataclass
class _Relay:
    requester: Addr
    requester_node: str
    requester_probe: int
    target: str
    deadline: float
    coordinated: bool = False  # our ping to the target carried a coordinate


@dataclass
class _Suspicion:
    incarnation: int
    start: float
    low: float
    high: float
    expected: int
    deadline: float
    confirmers: set[str] = field(default_factory=set)


class Membership:
    def __init__(self, *, node_id: str, cluster: str, role: str, gossip: Addr, http: str, incarnation: int,
                 admission: AdmissionState, config: Config, rng: random.Random, now: float,
                 vivaldi: VivaldiConfig | None = None) -> None:
        self.id = node_id
        self.cluster = cluster
        self.config = config
        self.admission = admission
        self.rng = rng
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.queue: BroadcastQueue[Update] = BroadcastQueue(config.retransmit_mult, config.max_broadcasts)
        self.ignored: dict[str, int] = {}  # updates we did not apply, by reason
        self.leaving = False
        self.coordinates = Coordinates(vivaldi)  # ours, and those the members gossiped
        # Vivaldi draws (a direction to leave a point shared with a peer) come from a generator
        # seeded from ``rng``'s state without drawing from it, so the probe order and every other
        # use of ``rng`` stay what they were without coordinates.
        self._vivaldi_rng = random.Random(hash(rng.getstate()[1]))  # the ints only: stable across runs
        self._firsthand: set[str] = set()  # members whose coordinate we heard from themselves
        self._plain: set[str] = set()  # members that missed a ping with a coordinate: no more until they send one
        self._members: dict[str, Member] = {
            node_id: Member(node_id, cluster, role, gossip, http, MemberState.ALIVE, incarnation, now)}
        self._out: list[Outgoing] = []
        self._events: deque[MemberEvent] = deque(maxlen=config.max_events)
        self._probe_no = 0
        self._probes: dict[str, _Probe | None] = {pool: None for pool in POOLS}
        self._order: dict[str, list[str]] = {pool: [] for pool in POOLS}
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._next_probe = {LOCAL: now + rng.uniform(0, config.probe_interval),
                            CROSS: now + rng.uniform(0, config.cross_probe_interval)}
        self._next_gossip = {LOCAL: now + config.gossip_interval, CROSS: now + config.cross_gossip_interval}
        self._next_push_pull = now + rng.uniform(0.5, 1.0) * config.push_pull_interval
        self._next_reconnect = now + config.reconnect_interval
        own = admission.certificate(node_id)
        if own is not None:
            self.queue.push(("c", node_id), CertUpdate(own))
        self._queue_self()

    # -- view -----------------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._members[self.id].incarnation

    def members(self) -> list[MemberInfo]:
        return [m.info(self._estimate(m)) for _, m in sorted(self._members.items())]

    def member(self, node_id: str) -> MemberInfo | None:
        m = self._members.get(node_id)
        return None if m is None else m.info(self._estimate(m))

    def rtt(self, a: str, b: str) -> float | None:
        """Estimated round-trip time between members ``a`` and ``b``, seconds, or None if unknown.

        From us to a member: the smoothed RTT of our direct probes when we have one, else the
        Vivaldi distance; between two other members: the Vivaldi distance of their coordinates."""
        if a == b:
            return 0.0
        if b == self.id:
            a, b = b, a
        if a == self.id:
            m = self._members.get(b)
            if m is not None and m.rtt is not None:
                return m.rtt
        return self.coordinates.rtt(a, b, me=self.id)

    def _estimate(self, m: Member) -> float | None:
        if m.id == self.id:
            return None
        return m.rtt if m.rtt is not None else self.coordinates.rtt(self.id, m.id, me=self.id)

    def drain_events(self) -> list[MemberEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    # -- the four verbs -------------------------------------------------------------------------

    def receive(self, sender: str, addr: Addr, msg: Datagram, now: float) -> None:
        """Apply one datagram from the admitted member ``sender`` that came from ``addr``."""
        self._apply_updates(msg.updates, now)
        if msg.control is not None:
            self._control(sender, addr, msg.control, now)

    def handle_timer(self, now: float) -> None:
        if self.leaving:
            return
        for pool in POOLS:
            probe = self._probes[pool]
            if probe is not None and now >= probe.deadline:
                self._probe_deadline(probe, now)
        for probe_no, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[probe_no]
                if relay.coordinated:
                    self._plain.add(relay.target)
                self._send(relay.requester, Nack(relay.requester_probe), LOCAL)
        for node, s in list(self._suspicions.items()):
            if now >= s.deadline:
                del self._suspicions[node]
                m = self._members.get(node)
                if m is not None and m.state == MemberState.SUSPECT and m.incarnation == s.incarnation:
                    self._apply(Dead(node, m.incarnation, self.id), now)
        for pool in POOLS:
            if now >= self._next_probe[pool]:
                self._start_probe(pool, now)
            if now >= self._next_gossip[pool]:
                self._gossip(pool, now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + push_pull_interval(self.config, self._reachable_count())
            peers = [m for m in self._members.values() if m.id != self.id and m.state == MemberState.ALIVE]
            if peers:
                peer = self.rng.choice(peers)
                self._out.append(StartPushPull(peer.gossip, peer.id))
        if now >= self._next_reconnect:
            # Nobody probes a dead member: without this, the two sides of a healed partition would
            # each keep the other dead. The exchange tells the far side it was declared dead (it
            # refutes with a higher incarnation) and brings its view here.
            self._next_reconnect = now + self.config.reconnect_interval
            dead = [m for m in self._members.values() if m.id != self.id and m.state == MemberState.DEAD]
            if dead:
                peer = self.rng.choice(dead)
                self._out.append(StartPushPull(peer.gossip, peer.id))
        for node, m in list(self._members.items()):
            if not m.reachable and node != self.id and now >= m.since + self._keep_for(m):
                del self._members[node]
                self._forget_coordinate(node)
                self._emit("removed", m)

    def _keep_for(self, m: Member) -> float:
        """How long an unreachable member is kept: a dead one long enough to reconnect after a partition."""
        return self.config.reconnect_timeout if m.state == MemberState.DEAD else self.config.dead_reclaim

    def next_deadline(self) -> float | None:
        if self.leaving:
            return None
        times = [*self._next_probe.values(), *self._next_gossip.values(), self._next_push_pull,
                 self._next_reconnect]
        times += [p.deadline for p in self._probes.values() if p is not None]
        times += [r.deadline for r in self._relays.values()]
        times += [s.deadline for s in self._suspicions.values()]
        times += [m.since + self._keep_for(m) for m in self._members.values() if not m.reachable]
        return min(times)

    def drain(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    # -- push-pull, admission, leave ---------------------------------------------------------------

    def local_state(self) -> PushPull:
        coordinates = self.coordinates
        records = tuple(MemberRecord(m.id, m.incarnation, m.state.value, m.gossip, m.http,
                                     coordinates.local if m.id == self.id else coordinates.get(m.id))
                        for m in self._members.values())
        return PushPull(records, tuple(self.admission.certificates.values()),
                        tuple(self.admission.revocations.values()))

    def merge_state(self, sender: str, state: PushPull, now: float) -> None:
        """Anti-entropy: merge a peer's full view. A remote 'dead' only makes us suspect (it may refute)."""
        updates: list[Update] = [RevokeUpdate(r) for r in state.revocations]
        updates += [CertUpdate(c) for c in state.certificates]
        for r in state.members:
            if r.state == MemberState.ALIVE.value:
                updates.append(Alive(r.node, r.incarnation, r.gossip, r.http))
            elif r.state == MemberState.LEFT.value:
                updates.append(Dead(r.node, r.incarnation, r.node))
            else:  # suspect or dead: about another member, we only suspect; about us, we refute
                updates.append(Suspect(r.node, r.incarnation, sender))
        self._apply_updates(updates, now)
        for r in state.members:
            # A member's own word on its coordinate wins; another's only fills a gap or
            # replaces what we also heard second-hand.
            if r.coordinate is not None and r.node != self.id and (r.node == sender or r.node not in self._firsthand):
                self._learn(r.node, r.coordinate, firsthand=r.node == sender)

    def admit(self, update: CertUpdate | RevokeUpdate, now: float) -> None:
        """Apply and spread a certificate or revocation made here (by the admin)."""
        self._apply(update, now)

    def leave(self, now: float) -> None:
        """Tell every member of our cluster and a few others that we leave on purpose; after this the
        core stays quiet. Our own cluster hears it directly, not by gossip: its hosts are the ones
        whose commits copy chunks to us and must stop counting us at once."""
        me = self._members[self.id]
        me.incarnation += 1
        me.state, me.since = MemberState.LEFT, now
        self.queue.push(("m", self.id), Dead(self.id, me.incarnation, self.id))
        peers = [m for m in self._members.values() if m.id != self.id and m.reachable]
        own = [m for m in peers if m.cluster == self.cluster]
        others = [m for m in peers if m.cluster != self.cluster]
        few = min(len(others), self.config.gossip_nodes + self.config.cross_gossip_nodes)
        for m in own + self.rng.sample(others, few):
            self._out.append(SendDatagram(m.gossip, Datagram(None, (Dead(self.id, me.incarnation, self.id),))))
        self.leaving = True

    # -- control messages --------------------------------------------------------------------------

    def _control(self, sender: str, addr: Addr, msg: Control, now: float) -> None:
        if isinstance(msg, Ping):
            if msg.target != self.id:
                self._ignore("misdirected_ping")
                return
            coordinate = None
            if msg.coordinate is not None:  # the pinger reads coordinates: the ack carries ours
                self._learn(sender, msg.coordinate, firsthand=True)
                coordinate = self.coordinates.local
            self._send(addr, Ack(msg.probe, coordinate), self._pool_of_id(sender))
        elif isinstance(msg, PingReq):
            if len(self._relays) >= self.config.max_relays:
                self._ignore("too_many_relays")
                return
            probe_no = self._next_probe_no()
            pool = self._pool_of_id(msg.target)
            timeout = self.config.probe_timeout if pool == LOCAL else self.config.cross_probe_timeout
            coordinate = self._coordinate_for(msg.target)
            self._relays[probe_no] = _Relay(addr, sender, msg.probe, msg.target, now + self.awareness.scale(timeout),
                                            coordinate is not None)
            self._send(msg.target_addr, Ping(probe_no, msg.target, coordinate), pool)
        elif isinstance(msg, Ack):
            relay = self._relays.pop(msg.probe, None)
            if relay is not None:
                if sender == relay.target:
                    if msg.coordinate is not None:
                        self._learn(sender, msg.coordinate, firsthand=True)
                    relayed = msg.coordinate if self._speaks_coordinates(relay.requester_node) else None
                    self._send(relay.requester, Ack(relay.requester_probe, relayed), LOCAL)
                return
            for pool, probe in self._probes.items():
                if probe is not None and probe.probe == msg.probe and (sender == probe.target or sender in probe.helpers):
                    if sender == probe.target:
                        target = self._members.get(probe.target)
                        if target is not None:
                            rtt = now - probe.sent
                            target.rtt = observe_rtt(target.rtt, rtt)
                            if msg.coordinate is not None:
                                self._observe(target.id, msg.coordinate, rtt)
                    elif msg.coordinate is not None and probe.target not in self._firsthand:
                        self._learn(probe.target, msg.coordinate, firsthand=False)  # relayed by a helper
                    self.awareness.apply(-1)
                    self._probes[pool] = None
                    return
        elif isinstance(msg, Nack):
            for probe in self._probes.values():
                if probe is not None and probe.probe == msg.probe and sender in probe.helpers:
                    probe.nacks += 1

    # -- probing and gossip -------------------------------------------------------------------------

    def _start_probe(self, pool: str, now: float) -> None:
        interval = self.config.probe_interval if pool == LOCAL else self.config.cross_probe_interval
        timeout = self.config.probe_timeout if pool == LOCAL else self.config.cross_probe_timeout
        self._next_probe[pool] = now + self.awareness.scale(interval)
        if self._probes[pool] is not None:
            return
        target = self._next_target(pool)
        if target is None:
            return
        coordinate = self._coordinate_for(target.id)
        probe = _Probe(pool, target.id, target.gossip, self._next_probe_no(), now, now + self.awareness.scale(timeout),
                       coordinated=coordinate is not None)
        self._probes[pool] = probe
        self._send(target.gossip, Ping(probe.probe, target.id, coordinate), pool)

    def _next_target(self, pool: str) -> Member | None:
        order = self._order[pool]
        for _ in range(2):
            while order:
                m = self._members.get(order.pop())
                if m is not None and m.reachable and self._pool_of(m) == pool:
                    return m
            order.extend(n for n, m in self._members.items()
                         if n != self.id and m.reachable and self._pool_of(m) == pool)
            self.rng.shuffle(order)
        return None

    def _probe_deadline(self, probe: _Probe, now: float) -> None:
        if not probe.indirect:
            if probe.coordinated:
                self._plain.add(probe.target)
            interval = self.config.probe_interval if probe.pool == LOCAL else self.config.cross_probe_interval
            helpers = [m for m in self._members.values()
                       if m.id not in (self.id, probe.target) and m.state == MemberState.ALIVE]
            helpers = self.rng.sample(helpers, min(len(helpers), self.config.indirect_checks))
            probe.indirect, probe.helpers = True, tuple(m.id for m in helpers)
            timeout = self.config.probe_timeout if probe.pool == LOCAL else self.config.cross_probe_timeout
            # After a stall of ours, still give the helpers a full timeout.
            probe.deadline = max(probe.sent + self.awareness.scale(interval), now + timeout)
            for m in helpers:
                self._send(m.gossip, PingReq(probe.probe, probe.target, probe.addr), self._pool_of(m))
            return
        self._probes[probe.pool] = None
        if probe.helpers and probe.nacks < len(probe.helpers):
            self.awareness.apply(+1)  # helpers did not answer us either: maybe we are the slow one
        target = self._members.get(probe.target)
        if target is not None and target.reachable:
            self._apply(Suspect(target.id, target.incarnation, self.id), now)

    def _gossip(self, pool: str, now: float) -> None:
        interval = self.config.gossip_interval if pool == LOCAL else self.config.cross_gossip_interval
        count = self.config.gossip_nodes if pool == LOCAL else self.config.cross_gossip_nodes
        self._next_gossip[pool] = now + interval
        if not len(self.queue):
            return
        targets = [m for n, m in self._members.items() if n != self.id and self._pool_of(m) == pool and
                   (m.reachable or (m.state == MemberState.DEAD and now - m.since < self.config.gossip_to_the_dead))]
        for m in self.rng.sample(targets, min(count, len(targets))):
            datagram = self._datagram(None, pool)
            if datagram.updates:
                self._out.append(SendDatagram(m.gossip, datagram))

    def _send(self, addr: Addr, control: Control, pool: str) -> None:
        self._out.append(SendDatagram(addr, self._datagram(control, pool)))

    def _datagram(self, control: Control | None, pool: str) -> Datagram:
        budget = self.config.max_datagram - self.config.envelope_overhead
        if control is not None:
            budget -= len(pack(control.to_wire()))
        max_count = None if pool == LOCAL else self.config.cross_max_updates
        updates = self.queue.take(self._reachable_count(), budget, _wire_size, max_count)
        return Datagram(control, tuple(updates))

    # -- updates ----------------------------------------------------------------------------------

    def _apply_updates(self, updates: tuple[Update, ...] | list[Update], now: float) -> None:
        # Admission first: a datagram may carry a new member's certificate next to its alive.
        first = [u for u in updates if isinstance(u, CertUpdate | RevokeUpdate)]
        for update in first + [u for u in updates if not isinstance(u, CertUpdate | RevokeUpdate)]:
            try:
                self._apply(update, now)
            except ProtocolError as exc:
                self._ignore(exc.reason)

    def _apply(self, update: Update, now: float) -> None:
        if isinstance(update, CertUpdate):
            if self.admission.add_certificate(update.cert):
                self.queue.push(("c", update.cert.node_id), update)
                m = self._members.get(update.cert.node_id)
                if m is not None:
                    m.cluster, m.role = update.cert.cluster, update.cert.role
        elif isinstance(update, RevokeUpdate):
            if self.admission.add_revocation(update.revocation):
                self.queue.push(("r", update.revocation.node_id), update)
                self._suspicions.pop(update.revocation.node_id, None)
                m = self._members.pop(update.revocation.node_id, None) if update.revocation.node_id != self.id \
                    else self._members.get(self.id)
                if m is not None:
                    if m.id != self.id:
                        self._forget_coordinate(m.id)
                    self._emit("removed", m)
        elif isinstance(update, Alive):
            self._alive(update, now)
        elif isinstance(update, Suspect):
            self._suspect(update, now)
        else:
            self._dead(update, now)

    def _alive(self, update: Alive, now: float) -> None:
        if update.node == self.id:
            if update.incarnation > self.incarnation and not self.leaving:
                self._refute(update.incarnation, now)
            return
        status = self.admission.status(update.node)
        if status != "admitted":
            self._ignore(f"{status}_member")
            return
        current = self._members.get(update.node)
        if not alive_wins(current, update.incarnation):
            return
        cert = self.admission.certificate(update.node)
        assert cert is not None
        if current is None:
            if len(self._members) >= self.config.max_members:
                self._ignore("too_many_members")
                return
            current = Member(update.node, cert.cluster, cert.role, update.gossip, update.http,
                             MemberState.ALIVE, update.incarnation, now)
            self._members[update.node] = current
            kind = "joined"
        else:
            kind = {MemberState.ALIVE: "updated", MemberState.SUSPECT: "alive"}.get(current.state, "joined")
            if current.state != MemberState.ALIVE:
                current.since = now
            current.state, current.incarnation = MemberState.ALIVE, update.incarnation
            current.gossip, current.http = update.gossip, update.http
        self._suspicions.pop(update.node, None)
        self.queue.push(("m", update.node), update)
        self._emit(kind, current)

    def _suspect(self, update: Suspect, now: float) -> None:
        if update.node == self.id:
            if update.incarnation >= self.incarnation and not self.leaving:
                self.awareness.apply(+1)
                self._refute(update.incarnation, now)
            return
        current = self._members.get(update.node)
        if current is None:
            return
        suspicion = self._suspicions.get(update.node)
        if (current.state == MemberState.SUSPECT and suspicion is not None
                and update.incarnation == current.incarnation):
            if update.source not in suspicion.confirmers:
                suspicion.confirmers.add(update.source)
                suspicion.deadline = suspicion_deadline(suspicion.start, suspicion.low, suspicion.high,
                                                        suspicion.expected, len(suspicion.confirmers) - 1)
                self.queue.push(("m", update.node), update)
            return
        if not suspect_wins(current, update.incarnation):
            return
        current.state, current.incarnation, current.since = MemberState.SUSPECT, update.incarnation, now
        interval = self.config.probe_interval if self._pool_of(current) == LOCAL else self.config.cross_probe_interval
        n = self._reachable_count()
        low, high = suspicion_timeouts(self.config.suspicion_mult, self.config.suspicion_max_timeout_mult, n, interval)
        expected = expected_confirmations(self.config.indirect_checks, n)
        self._suspicions[update.node] = _Suspicion(update.incarnation, now, low, high, expected,
                                                   suspicion_deadline(now, low, high, expected, 0), {update.source})
        self.queue.push(("m", update.node), update)
        self._emit("suspect", current)

    def _dead(self, update: Dead, now: float) -> None:
        if update.node == self.id:
            if not self.leaving:
                self._refute(update.incarnation, now)
            return
        current = self._members.get(update.node)
        if not dead_wins(current, update.incarnation):
            return
        assert current is not None
        current.state = MemberState.LEFT if update.left else MemberState.DEAD
        current.incarnation, current.since = update.incarnation, now
        self._suspicions.pop(update.node, None)
        for pool, probe in self._probes.items():
            if probe is not None and probe.target == update.node:
                self._probes[pool] = None
        self.queue.push(("m", update.node), update)
        self._emit(current.state.value, current)

    def _refute(self, incarnation: int, now: float) -> None:
        me = self._members[self.id]
        me.incarnation = max(me.incarnation, incarnation) + 1
        self._queue_self()

    def _queue_self(self) -> None:
        me = self._members[self.id]
        self.queue.push(("m", self.id), Alive(self.id, me.incarnation, me.gossip, me.http))

    # -- coordinates --------------------------------------------------------------------------------

    def _speaks_coordinates(self, node: str) -> bool:
        """Whether ``node`` reads coordinates: we hold one it gossiped, and it has not missed a ping
        with one since it last sent us one itself."""
        return node not in self._plain and self.coordinates.get(node) is not None

    def _coordinate_for(self, node: str) -> Coordinate | None:
        """Our coordinate, to put in a ping or ack for ``node``; None for a member that would drop it."""
        return self.coordinates.local if self._speaks_coordinates(node) else None

    def _usable(self, coordinate: Coordinate) -> bool:
        if len(coordinate.vec) != self.coordinates.config.dimensions:
            self._ignore("coordinate_dimensions")  # a member configured otherwise: no common space
            return False
        return True

    def _learn(self, node: str, coordinate: Coordinate, firsthand: bool) -> None:
        if node == self.id or node not in self._members or not self._usable(coordinate):
            return
        self.coordinates.learn(node, coordinate)
        if firsthand:
            self._firsthand.add(node)
            self._plain.discard(node)

    def _observe(self, node: str, coordinate: Coordinate, rtt: float) -> None:
        """A direct probe of ``node`` took ``rtt`` seconds and its ack said it sits at ``coordinate``."""
        if not self._usable(coordinate):
            return
        if not (math.isfinite(rtt) and 0.0 <= rtt <= MAX_RTT_SAMPLE):
            self._ignore("rtt_sample_out_of_range")
            return
        self.coordinates.observe(node, coordinate, rtt, self._vivaldi_rng)
        self._firsthand.add(node)
        self._plain.discard(node)

    def _forget_coordinate(self, node: str) -> None:
        self.coordinates.forget(node)
        self._firsthand.discard(node)
        self._plain.discard(node)

    # -- helpers ----------------------------------------------------------------------------------

    def _pool_of(self, m: Member) -> str:
        return LOCAL if m.cluster == self.cluster else CROSS

    def _pool_of_id(self, node: str) -> str:
        m = self._members.get(node)
        return LOCAL if m is None else self._pool_of(m)

    def _reachable_count(self) -> int:
        return sum(1 for m in self._members.values() if m.reachable)

    def _next_probe_no(self) -> int:
        self._probe_no += 1
        return self._probe_no

    def _emit(self, kind: str, m: Member) -> None:
        if len(self._events) == self._events.maxlen:
            self._ignore("events_overflow")
        self._events.append(MemberEvent(kind, m.info(self._estimate(m))))

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1


def _wire_size(update: Update) -> int:
    return len(pack(update.to_wire())) + 1


