"""The simulated network: hosts in clusters, links with latency, bandwidth, loss and a price.

Each direction of a link is a pipe. A bulk transfer shares its pipe with the others in flight:
``fair`` pipes give every flow an equal share (processor sharing, computed with a virtual-time
tag per flow so each event costs O(log n)); ``fifo`` pipes send one flow after the other. Small
datagrams (gossip, control) pay their serialisation delay but do not queue behind bulk flows:
they are a negligible share of the link and real stacks give them their own socket.

Inside a cluster a host's pipe is its NIC (egress); between clusters the pipe is the WAN link
of the ordered cluster pair. Loss drops datagrams; a reliable transfer is not lost (TCP resends)
but fails if its destination is down or cut off by a partition. Every byte is accounted by link
class, cluster pair, category and host, over time, and priced by its link class.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from sim.engine import Engine, Timer

DATAGRAM_BYTES = 1500
OVERHEAD_CATEGORIES = frozenset({"gossip", "push_pull"})  # membership traffic: one series of its own
OVERHEAD_SERIES = "gossip (all hosts)"
GB = 1e9  # prices are per 10^9 bytes


@dataclass(frozen=True)
class LinkSpec:
    """One link class instance between two clusters (or inside one: the LAN)."""

    link_class: str
    latency_s: float
    bandwidth_bps: float
    loss: float = 0.0


@dataclass
class Host:
    name: str  # "cluster/index"
    cluster: str
    index: int
    master: bool
    up: bool = True


@dataclass(frozen=True)
class Partition:
    start: float
    end: float
    side_a: frozenset[str]
    side_b: frozenset[str]

    def cuts(self, ca: str, cb: str, now: float) -> bool:
        if not (self.start <= now < self.end):
            return False
        return (ca in self.side_a and cb in self.side_b) or (ca in self.side_b and cb in self.side_a)


class FairPipe:
    """Processor sharing: n flows in flight each get bandwidth/n."""

    def __init__(self, engine: Engine, bandwidth_bps: float) -> None:
        self.engine = engine
        self.rate = bandwidth_bps / 8.0  # bytes per second
        self.vtime = 0.0
        self.last = 0.0
        self.flows: list[tuple[float, int, float, Callable[[float, float], None]]] = []
        self._seq = 0
        self._timer: Timer | None = None

    def _advance(self) -> None:
        now = self.engine.now
        if self.flows:
            self.vtime += (now - self.last) * self.rate / len(self.flows)
        self.last = now

    def add(self, nbytes: int, done: Callable[[float, float], None]) -> None:
        """Start a flow; ``done(start, finish)`` runs when its last byte leaves."""
        self._advance()
        self._seq += 1
        heapq.heappush(self.flows, (self.vtime + nbytes, self._seq, self.engine.now, done))
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.flows:
            left = max(0.0, self.flows[0][0] - self.vtime)
            self._timer = self.engine.timer(self.engine.now + left * len(self.flows) / self.rate, self._finish)

    def _finish(self) -> None:
        self._timer = None
        self._advance()
        now = self.engine.now
        # the first flow is due now; float rounding must not leave it a sliver of bytes short
        slack = 1e-9 * max(1.0, abs(self.vtime)) + 1e-6
        finished = [heapq.heappop(self.flows)] if self.flows else []
        while self.flows and self.flows[0][0] <= self.vtime + slack:
            finished.append(heapq.heappop(self.flows))
        if self.flows:
            self.vtime = max(self.vtime, finished[-1][0]) if finished else self.vtime
        for _, _, start, done in finished:
            done(start, now)
        self._rearm()


class FifoPipe:
    """One flow at a time, in arrival order."""

    def __init__(self, engine: Engine, bandwidth_bps: float) -> None:
        self.engine = engine
        self.rate = bandwidth_bps / 8.0
        self.free_at = 0.0

    def add(self, nbytes: int, done: Callable[[float, float], None]) -> None:
        start = max(self.engine.now, self.free_at)
        self.free_at = start + nbytes / self.rate
        self.engine.at(self.free_at, done, start, self.free_at)


class Ledger:
    """Bytes and dollars by link class, cluster pair, category and host, over time.

    Membership traffic (``OVERHEAD_CATEGORIES``) counts in every total but has one series of its own
    (``OVERHEAD_SERIES``, all hosts together), so the per-host series show the data and control traffic.
    """

    def __init__(self, prices: dict[str, float], bucket_s: float, series_hosts: bool) -> None:
        self.prices = prices
        self.bucket_s = bucket_s
        self.series_hosts = series_hosts
        self.by_class: dict[str, int] = {}
        self.by_pair: dict[str, int] = {}
        self.overhead_by_pair: dict[str, int] = {}  # the membership traffic in by_pair
        self.by_category: dict[str, int] = {}
        self.wan_by_category: dict[str, int] = {}
        self.host_tx: dict[str, int] = {}
        self.host_rx: dict[str, int] = {}
        self.series: dict[str, dict[int, float]] = {}  # host or cluster -> bucket -> bytes (tx + rx)
        self.messages = 0
        self.dropped: dict[str, int] = {}

    def cost_usd(self) -> float:
        return sum(n / GB * self.prices.get(c, 0.0) for c, n in self.by_class.items())

    def wan_bytes(self) -> int:
        return sum(n for c, n in self.by_class.items() if c != "lan")

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def record(self, src: Host, dst: Host, spec: LinkSpec, nbytes: int, category: str,
               start: float, end: float) -> None:
        self.messages += 1
        c = spec.link_class
        self.by_class[c] = self.by_class.get(c, 0) + nbytes
        pair = f"{src.cluster}->{dst.cluster}"
        self.by_pair[pair] = self.by_pair.get(pair, 0) + nbytes
        if category in OVERHEAD_CATEGORIES:
            self.overhead_by_pair[pair] = self.overhead_by_pair.get(pair, 0) + nbytes
        self.by_category[category] = self.by_category.get(category, 0) + nbytes
        if c != "lan":
            self.wan_by_category[category] = self.wan_by_category.get(category, 0) + nbytes
        self.host_tx[src.name] = self.host_tx.get(src.name, 0) + nbytes
        self.host_rx[dst.name] = self.host_rx.get(dst.name, 0) + nbytes
        if category in OVERHEAD_CATEGORIES:
            self._spread(OVERHEAD_SERIES, nbytes, start, end)
        elif self.series_hosts:
            self._spread(src.name, nbytes, start, end)
            self._spread(dst.name, nbytes, start, end)
        else:
            self._spread("cluster:" + src.cluster, nbytes, start, end)
            if dst.cluster != src.cluster:
                self._spread("cluster:" + dst.cluster, nbytes, start, end)

    def _spread(self, who: str, nbytes: int, start: float, end: float) -> None:
        """Spread a transfer's bytes evenly over the time buckets it spans."""
        s = self.series.setdefault(who, {})
        b = self.bucket_s
        first, last = int(start // b), int(end // b)
        if first == last or end <= start:
            s[last] = s.get(last, 0.0) + nbytes
            return
        per_s = nbytes / (end - start)
        for k in range(first, last + 1):
            lo, hi = max(start, k * b), min(end, (k + 1) * b)
            if hi > lo:
                s[k] = s.get(k, 0.0) + per_s * (hi - lo)


class Network:
    """Moves messages between hosts on the engine's clock, and accounts for them."""

    def __init__(self, engine: Engine, hosts: list[Host], lan: dict[str, LinkSpec],
                 wan: dict[tuple[str, str], LinkSpec], partitions: list[Partition], ledger: Ledger,
                 sharing: str = "fair", reliable_timeout_s: float = 5.0) -> None:
        self.engine = engine
        self.hosts = {h.name: h for h in hosts}
        self.lan = lan
        self.wan = wan
        self.partitions = partitions
        self.ledger = ledger
        self.reliable_timeout_s = reliable_timeout_s
        self._pipe_cls = FairPipe if sharing == "fair" else FifoPipe
        self._pipes: dict[object, FairPipe | FifoPipe] = {}
        self._loss = engine.rng("loss")

    def link(self, src: Host, dst: Host) -> LinkSpec:
        if src.cluster == dst.cluster:
            return self.lan[src.cluster]
        return self.wan[(src.cluster, dst.cluster)]

    def partitioned(self, ca: str, cb: str) -> bool:
        if ca == cb:
            return False
        now = self.engine.now
        return any(p.cuts(ca, cb, now) for p in self.partitions)

    def _pipe(self, src: Host, dst: Host, spec: LinkSpec) -> FairPipe | FifoPipe:
        key: object = src.name if src.cluster == dst.cluster else (src.cluster, dst.cluster)
        p = self._pipes.get(key)
        if p is None:
            p = self._pipes[key] = self._pipe_cls(self.engine, spec.bandwidth_bps)
        return p

    def send(self, src: str, dst: str, nbytes: int, on_deliver: Callable[[], None], category: str,
             reliable: bool = True, on_fail: Callable[[], None] | None = None) -> None:
        """Send ``nbytes`` from ``src`` to ``dst``; call ``on_deliver`` when they arrive.

        A reliable send that cannot complete calls ``on_fail`` after the transport timeout.
        """
        s, d = self.hosts[src], self.hosts[dst]
        if not s.up:
            self.ledger.drop("sender_down")
            return
        if s is d:
            self.engine.after(0.0, on_deliver)
            return
        if self.partitioned(s.cluster, d.cluster) or not d.up:
            self.ledger.drop("partition" if d.up else "receiver_down")
            if reliable and on_fail is not None:
                self.engine.after(self.reliable_timeout_s, on_fail)
            return
        spec = self.link(s, d)
        if not reliable and spec.loss > 0.0 and self._loss.random() < spec.loss:
            self.ledger.drop("loss")
            return
        if nbytes <= DATAGRAM_BYTES:
            now = self.engine.now
            end = now + nbytes * 8.0 / spec.bandwidth_bps
            self.ledger.record(s, d, spec, nbytes, category, now, end)
            self.engine.at(end + spec.latency_s, self._arrive, s, d, on_deliver, reliable, on_fail)
            return

        def done(start: float, finish: float) -> None:
            self.ledger.record(s, d, spec, nbytes, category, start, finish)
            self.engine.at(finish + spec.latency_s, self._arrive, s, d, on_deliver, reliable, on_fail)

        self._pipe(s, d, spec).add(nbytes, done)

    def _arrive(self, s: Host, d: Host, on_deliver: Callable[[], None], reliable: bool,
                on_fail: Callable[[], None] | None) -> None:
        if d.up and s.up and not self.partitioned(s.cluster, d.cluster):
            on_deliver()
            return
        self.ledger.drop("lost_in_flight")
        if reliable and on_fail is not None:
            on_fail()
