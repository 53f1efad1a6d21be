"""A deterministic fake network for membership cores: virtual clock, latency, loss, crashes.

Every datagram goes through its wire form (to_wire, msgpack, from_wire) so the tests also cover
serialisation. Push-pull is done at once, as the runtime's TCP exchange would.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.core.admission import AdmissionState, issue_certificate
from mesh.core.codec import pack, unpack
from mesh.core.identity import Identity
from mesh.core.membership import Config, Datagram, Membership, SendDatagram, StartPushPull
from mesh.core.membership.messages import Addr


def ident(n: int) -> Identity:
    return Identity(n.to_bytes(4, "big") * 8)


ADMIN = Identity(b"A" * 32)


@dataclass
class SimNet:
    config: Config
    seed: int = 1
    latency: float = 0.002
    loss: float = 0.0
    now: float = 0.0
    nodes: dict[Addr, Membership] = field(default_factory=dict)
    down: set[Addr] = field(default_factory=set)
    slow: dict[Addr, float] = field(default_factory=dict)  # extra delay of everything a host receives
    sent: list[tuple[Addr, Addr, Datagram]] = field(default_factory=list)
    side: dict[Addr, int] = field(default_factory=dict)  # during a partition: which side a host is on
    one_way: Callable[[Addr, Addr], float] | None = None  # per-pair one-way delay, instead of ``latency``
    _heap: list = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def addr(self, n: int) -> Addr:
        return (f"10.0.0.{n}", 7946)

    def add(self, n: int, cluster: str = "a", incarnation: int = 1, seed_node: int | None = 0) -> Membership:
        """Admit host ``n`` (a certificate from the admin) and join it through ``seed_node``."""
        who = ident(n)
        cert = issue_certificate(ADMIN, who.public_key, cluster, "master", self.now)
        admission = AdmissionState(ADMIN.public_key)
        admission.add_certificate(cert)
        for other in self.nodes.values():  # the admin's push of the new cert, done by hand
            other.admission.add_certificate(cert)
            for c in other.admission.certificates.values():
                admission.add_certificate(c)
        core = Membership(node_id=who.node_id, cluster=cluster, role="master", gossip=self.addr(n),
                          http=f"http://10.0.0.{n}:8080", incarnation=incarnation, admission=admission,
                          config=self.config, rng=random.Random(self.seed * 1000 + n), now=self.now)
        self.down.discard(self.addr(n))
        self.nodes[self.addr(n)] = core
        if seed_node is not None and self.addr(seed_node) in self.nodes and seed_node != n:
            self.push_pull(self.addr(n), self.addr(seed_node))
        self._flush(self.addr(n))
        return core

    def kill(self, n: int) -> None:
        self.down.add(self.addr(n))

    def partition(self, *groups: list[int]) -> None:
        """Cut the network between the groups (hosts inside a group still reach each other)."""
        self.side = {self.addr(n): i for i, group in enumerate(groups) for n in group}

    def heal(self) -> None:
        self.side = {}

    def cut(self, src: Addr, dst: Addr) -> bool:
        return src in self.side and dst in self.side and self.side[src] != self.side[dst]

    def push_pull(self, src: Addr, dst: Addr) -> None:
        a, b = self.nodes[src], self.nodes[dst]
        if dst in self.down or self.cut(src, dst):
            return
        b.merge_state(a.id, a.local_state(), self.now)
        a.merge_state(b.id, b.local_state(), self.now)

    def _flush(self, src: Addr) -> None:
        for out in self.nodes[src].drain():
            if isinstance(out, StartPushPull):
                if out.addr in self.nodes:
                    self.push_pull(src, out.addr)
                continue
            assert isinstance(out, SendDatagram)
            wire = pack(out.datagram.to_wire())
            assert len(wire) <= self.config.max_datagram - self.config.envelope_overhead + 50
            self.sent.append((src, out.addr, out.datagram))
            if self.rng.random() < self.loss:
                continue
            self._seq += 1
            base = self.latency if self.one_way is None else self.one_way(src, out.addr)
            delay = base + self.slow.get(out.addr, 0.0) + self.slow.get(src, 0.0)
            heapq.heappush(self._heap, (self.now + delay, self._seq, src, out.addr, wire))

    def run(self, duration: float) -> None:
        end = self.now + duration
        while True:
            live = [(c.next_deadline(), a) for a, c in self.nodes.items() if a not in self.down]
            live = [(t, a) for t, a in live if t is not None]
            t_timer = min(live)[0] if live else None
            t_msg = self._heap[0][0] if self._heap else None
            t = min(x for x in (t_timer, t_msg, end) if x is not None)
            if t >= end:
                self.now = end
                return
            self.now = max(self.now, t)
            if t_msg is not None and t_msg <= t:
                _, _, src, dst, wire = heapq.heappop(self._heap)
                if dst in self.nodes and dst not in self.down and src not in self.down and not self.cut(src, dst):
                    self.nodes[dst].receive(self.nodes[src].id, src, Datagram.from_wire(unpack(wire, 65536)), self.now)
                    self._flush(dst)
                continue
            for a, c in self.nodes.items():
                d = c.next_deadline()
                if a not in self.down and d is not None and d <= self.now:
                    c.handle_timer(self.now)
                    self._flush(a)

    def view(self, n: int) -> dict[str, str]:
        return {m.id: m.state.value for m in self.nodes[self.addr(n)].members()}

    def states_of(self, n: int) -> set[str]:
        """What every live host says about host ``n``."""
        target = ident(n).node_id
        return {self.view_of(a).get(target, "unknown") for a in self.nodes if a not in self.down}

    def view_of(self, addr: Addr) -> dict[str, str]:
        return {m.id: m.state.value for m in self.nodes[addr].members()}

    def run_until(self, predicate, limit: float, step: float = 0.05) -> float:
        start = self.now
        while not predicate():
            if self.now - start > limit:
                raise AssertionError(f"not reached within {limit} s")
            self.run(step)
        return self.now - start
