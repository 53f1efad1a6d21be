"""A tiny deterministic mesh of Issuers for model checking: fake clock, lossy links, partitions,
crashes that keep only persisted records, rosters delivered to each master at its own time.

``check()`` asserts the issue's invariants; the runner calls it after every event.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dht import Master, Placement
from mesh.core.codec import pack, unpack
from mesh.core.identity import Identity
from mesh.core.issuance import (
    AcceptRecord,
    Done,
    Issuer,
    IssuerConfig,
    Persist,
    PromiseRecord,
    Record,
    RoundRecord,
    Send,
    majority,
    manifest_hash,
    message_from_wire,
    message_to_wire,
)
from mesh.core.manifest import ChunkRef, Draft, Manifest, chunk_hash

SLACK = 1.0  # scheduling slack on top of commit_timeout for the bounded-time check


class Violation(AssertionError):
    pass


@dataclass
class Host:
    identity: Identity
    cluster: str
    issuer: Issuer | None
    store: dict[tuple, Record] = field(default_factory=dict)
    epoch_delivered_at: float = 0.0

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def persist(self, records: tuple[Record, ...]) -> None:
        for rec in records:
            match rec:
                case PromiseRecord():
                    self.store[("p", rec.key)] = rec
                case AcceptRecord():
                    self.store[("a", rec.key, rec.entry.version)] = rec
                case RoundRecord():
                    self.store[("r",)] = rec


@dataclass
class Writer:
    key: str
    host: str
    pending: str | None = None
    submitted_at: float = 0.0
    last_acked: int = 0
    acked: list[int] = field(default_factory=list)


class SimCluster:
    def __init__(self, seed: int, masters: int = 5, pool: int = 2, clusters: int = 2, keys: int = 3,
                 writers: int = 4, config: IssuerConfig | None = None,
                 issuer_cls: Callable[..., Issuer] = Issuer) -> None:
        self.rng = random.Random(seed)
        self.config = config or IssuerConfig(commit_timeout=10.0, retry_interval=0.5, vnodes=16)
        self.issuer_cls = issuer_cls
        self.now = 0.0
        self.loss = 0.0
        self.hosts: dict[str, Host] = {}
        for i in range(masters + pool):
            ident = Identity(self.rng.randbytes(32))
            self.hosts[ident.node_id] = Host(ident, f"c{i % clusters}", None)
        ids = list(self.hosts)
        self.roster_ids = ids[:masters]
        self.rosters: list[list[Master]] = []
        self.group: dict[str, int] = dict.fromkeys(ids, 0)
        self.net: list[tuple[float, int, str, str, object]] = []
        self.seq = 0
        self.writers = [Writer(f"k{i % keys}", self.roster_ids[i % masters]) for i in range(writers)]
        self.by_request: dict[str, Writer] = {}
        self.acked: dict[tuple[str, int], str] = {}
        self.copies_needed: dict[tuple[str, int], int] = {}
        self.commits = 0
        self.failures = 0
        self._new_roster(self.roster_ids, at_once=True)
        for h in self.hosts.values():
            self._start(h)

    # ---- topology ------------------------------------------------------------------------

    def _masters(self, ids: list[str]) -> list[Master]:
        return [Master(n, self.hosts[n].cluster) for n in ids]

    def _new_roster(self, ids: list[str], at_once: bool = False) -> None:
        self.roster_ids = list(ids)
        self.rosters.append(self._masters(ids))
        epoch = len(self.rosters) - 1
        for h in self.hosts.values():
            if h.issuer is not None:
                t = self.now if at_once else max(h.epoch_delivered_at, self.now + self.rng.uniform(0, 0.5))
                h.epoch_delivered_at = t
                self._schedule(t, "", h.node_id, ("roster", epoch))

    def _start(self, h: Host) -> None:
        h.issuer = self.issuer_cls(h.identity, self.config, random.Random(self.rng.random()), h.store.values())
        for epoch in range(max(0, len(self.rosters) - 2), len(self.rosters)):
            h.issuer.set_roster(epoch, self.rosters[epoch], self.now)
        self._refresh_views()

    def _refresh_views(self) -> None:
        for h in self.hosts.values():
            if h.issuer is not None:
                live = [o.node_id for o in self.hosts.values()
                        if o.issuer is not None and self.group[o.node_id] == self.group[h.node_id]]
                h.issuer.set_live(live, self.now)
                self._apply(h)

    def crash(self, i: int) -> None:
        h = self.hosts[list(self.hosts)[i % len(self.hosts)]]
        if h.issuer is None:
            return
        h.issuer = None
        for w in self.writers:
            if w.host == h.node_id and w.pending:
                del self.by_request[w.pending]
                w.pending = None
        self._refresh_views()

    def restart(self, i: int) -> None:
        h = self.hosts[list(self.hosts)[i % len(self.hosts)]]
        if h.issuer is None:
            self._start(h)

    def partition(self, i: int) -> None:
        for n in self.hosts:
            self.group[n] = self.rng.randrange(2)
        self._refresh_views()

    def heal(self) -> None:
        self.group = dict.fromkeys(self.hosts, 0)
        self._refresh_views()

    def settled(self) -> bool:
        return all(h.issuer is not None and h.issuer.handoffs_pending() == 0 for h in self.hosts.values())

    def change_roster(self, i: int) -> None:
        """A join or a graceful leave; the membership layer waits until hand-offs are done."""
        if not self.settled() or any(h.epoch_delivered_at > self.now for h in self.hosts.values()):
            return
        outside = [n for n in self.hosts if n not in self.roster_ids]
        if (i % 2 == 0 and outside) or len(self.roster_ids) <= 3:
            self._new_roster(self.roster_ids + [outside[i % len(outside)]])
        else:
            leaver = self.roster_ids[i % len(self.roster_ids)]
            self._new_roster([n for n in self.roster_ids if n != leaver])

    # ---- traffic -------------------------------------------------------------------------

    def commit(self, i: int, may_expect_parent: bool = True) -> None:
        w = self.writers[i % len(self.writers)]
        h = self.hosts[w.host]
        if w.pending is not None or h.issuer is None:
            return
        self.commits += 1
        rid = f"r{self.commits}"
        data = f"{rid} by {i}".encode()
        draft = Draft(w.key, len(data), chunk_hash(data), (ChunkRef(chunk_hash(data), len(data)),), f"w{i}")
        w.pending, w.submitted_at = rid, self.now
        self.by_request[rid] = w
        parent = w.last_acked if may_expect_parent and self.rng.random() < 0.2 else None
        h.issuer.submit(rid, draft, parent, self.now)
        self._apply(h)

    def _schedule(self, t: float, src: str, dst: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.net, (t, self.seq, src, dst, payload))

    def _apply(self, h: Host) -> None:
        assert h.issuer is not None
        for eff in h.issuer.drain():
            match eff:
                case Persist():
                    h.persist(eff.records)
                case Send():
                    if self.group[h.node_id] != self.group[eff.dest] or self.rng.random() < self.loss:
                        continue
                    wire = pack(message_to_wire(eff.message))
                    self._schedule(self.now + self.rng.uniform(0.001, 0.05), h.node_id, eff.dest, wire)
                case Done():
                    self._done(eff)
        self.check_durable()

    def _done(self, done: Done) -> None:
        w = self.by_request.pop(done.request_id, None)
        if w is None:
            raise Violation(f"Done for an unknown request {done.request_id}")
        w.pending = None
        if self.now > w.submitted_at + self.config.commit_timeout + SLACK:
            raise Violation(f"{done.request_id} took {self.now - w.submitted_at:.1f} s")
        if done.manifest is None:
            assert done.error is not None
            self.failures += 1
            return
        m = done.manifest
        if m.key != w.key or m.version <= w.last_acked:
            raise Violation(f"writer saw version {m.version} after {w.last_acked} for {w.key}")
        w.last_acked = m.version
        w.acked.append(m.version)
        h = manifest_hash(m.encode())
        if self.acked.setdefault((m.key, m.version), h) != h:
            raise Violation(f"({m.key}, {m.version}) acknowledged with two manifests")
        # a majority of the key's list (shorter than r under replica_scope=cluster in a small cluster)
        listed = Placement(self.rosters[-1], self.config.vnodes).replicas(m.key, self.config.replicas,
                                                                          self.config.replica_scope)
        self.copies_needed[(m.key, m.version)] = majority(len(listed))

    def run(self, dt: float) -> None:
        end = self.now + dt
        same_time = 0
        while True:
            t_net = self.net[0][0] if self.net else float("inf")
            timers = [(d, n) for n, h in self.hosts.items() if h.issuer is not None
                      for d in [h.issuer.next_deadline()] if d is not None]
            t_timer, who = min(timers) if timers else (float("inf"), "")
            t = min(t_net, t_timer)
            if t > end:
                break
            same_time = same_time + 1 if t <= self.now else 0
            if same_time > 10_000:
                raise Violation("a core keeps asking to be woken without advancing")
            self.now = max(self.now, t)
            if t_net <= t_timer:
                _, _, src, dst, payload = heapq.heappop(self.net)
                self._deliver(src, dst, payload)
            else:
                h = self.hosts[who]
                assert h.issuer is not None
                h.issuer.handle_timer(self.now)
                self._apply(h)
            self.check()
        self.now = end

    def _deliver(self, src: str, dst: str, payload: object) -> None:
        h = self.hosts[dst]
        if h.issuer is None:
            return
        if isinstance(payload, tuple):
            epoch = payload[1]
            h.issuer.set_roster(epoch, self.rosters[epoch], self.now)
        else:
            if self.group[src] != self.group[dst]:
                return
            msg = message_from_wire(unpack(payload, 1 << 24))  # type: ignore[arg-type]
            h.issuer.receive(src, msg, self.now)
        self._apply(h)

    # ---- invariants ----------------------------------------------------------------------

    def check_durable(self) -> None:
        """Every acknowledged version is persisted, same manifest, on a majority of a replica set."""
        for (key, version), h in self.acked.items():
            copies = sum(1 for host in self.hosts.values()
                         if (rec := host.store.get(("a", key, version))) is not None
                         and rec.entry.manifest_hash == h)
            if copies < self.copies_needed.get((key, version), 2):
                raise Violation(f"acknowledged ({key}, {version}) is durable on {copies} master(s)")

    def check(self) -> None:
        self.check_durable()
        seen: dict[tuple[str, int], Manifest] = {}
        for host in self.hosts.values():
            if host.issuer is None:
                continue
            for kv, m in host.issuer._cache.items():
                if seen.setdefault(kv, m) != m:
                    raise Violation(f"{kv} issued twice with different manifests")
                if kv in self.acked and manifest_hash(m.encode()) != self.acked[kv]:
                    raise Violation(f"{kv} cached with another manifest than the acknowledged one")
        for w in self.writers:
            if w.pending is not None and self.now > w.submitted_at + self.config.commit_timeout + SLACK:
                raise Violation(f"{w.pending} is not answered after {self.now - w.submitted_at:.1f} s")
