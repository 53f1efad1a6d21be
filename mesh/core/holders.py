"""Who holds what: soft-state holder records (sans-IO).

Three pieces, all soft state (lost on restart, rebuilt from reports, expired when not refreshed):

- ``HolderReporter`` (on every node): turns "I stored / dropped a chunk" into ``HolderReport``
  messages for the cluster's master: a full report on start and whenever asked, deltas batched
  every ``delta_interval``, a full report every ``full_interval`` as anti-entropy, and an empty
  delta as heartbeat so the lease never lapses while the node lives.
- ``HolderIndex`` (on every master): chunk -> nodes of its cluster. Each node has a lease
  (``ttl``) renewed by every accepted report and by ``touch`` (the failure detector saw it alive);
  ``forget`` drops a node the failure detector declared dead, an expired lease drops it at the
  latest ``ttl`` later. Reports carry ``(epoch, seq)``: a duplicate or stale one is ignored, a
  gap (a lost delta) asks the node for a full report (``RequestFullReport``).
- ``VersionHolders`` (at the home of a key): ``(key, version)`` -> clusters that hold all its
  chunks, announced by their masters (``VersionHeld``) and refreshed by re-announcing within ``ttl``.

Driving it::

    reporter = HolderReporter(epoch=incarnation, chunks=store.all_hashes(), now=now)
    reporter.added(h) / reporter.removed(h)         # the store kept / evicted a chunk
    reporter.request_full()                         # RequestFullReport came, or the master changed
    reporter.handle_timer(now); reporter.drain()    # -> [HolderReport] to send to the master

    index = HolderIndex(ttl=30.0)
    index.receive(node, report, now)                # a HolderReport from a node of this cluster
    index.touch(node, now) / index.forget(node)     # failure detector: alive / dead
    index.add(node, chunk, now)                     # first-hand (its WAN pull finished): kept even
                                                    # against a full report that left the node before
    index.holders(chunk, now) -> list[node]
    index.answer(WhoHolds(chunks), cluster, now) -> Holders   # a node or another master asks
    index.handle_timer(now); index.drain()          # -> [RequestFullReport(dest)]

    homes = VersionHolders(ttl=600.0)
    homes.receive(VersionHeld(key, version, cluster, held), now)
    homes.clusters(key, version, now) -> list[cluster]

Wire: ``to_wire()`` / ``from_wire(obj)`` on each message; ``from_wire`` raises ProtocolError.
Reports from one node to its master must travel in order (one stream); a reordering only costs
a full report. ``MAX_REPORT_CHUNKS`` bounds one message; a full report comes in parts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.core.keys import validate_key
from mesh.errors import InvalidKey, ProtocolError

HASH_HEX_LEN = 64
MAX_REPORT_CHUNKS = 50_000  # hashes per HolderReport: ~3.3 MB, under the stream message limit
MAX_CHUNKS_PER_NODE = 1 << 22
MAX_NODES = 4096  # nodes per cluster a master tracks
MAX_VERSION_RECORDS = 1 << 20  # (key, version, cluster) records at one home
MAX_CLUSTER_NAME = 64


def check(cond: bool, reason: str, what: str) -> None:
    if not cond:
        raise ProtocolError(reason, what)


def is_chunk_hash(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == HASH_HEX_LEN
            and all(c in "0123456789abcdef" for c in value))


def nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def chunk_list(obj: Any, reason: str, limit: int = MAX_REPORT_CHUNKS) -> tuple[str, ...]:
    check(isinstance(obj, list | tuple) and len(obj) <= limit, reason, "chunk list")
    check(all(is_chunk_hash(h) for h in obj), reason, "bad chunk hash")
    return tuple(obj)


def is_cluster_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLUSTER_NAME


@dataclass(frozen=True)
class HolderReport:
    """Node -> its master. ``full`` parts replace the node's set once the ``last`` part arrives."""

    epoch: int  # the node's incarnation; a new epoch must begin with a full report
    seq: int  # 1, 2, ... per epoch, every message (delta or full part)
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    full: bool = False
    part: int = 0  # index of this part of a full report
    last: bool = True  # the last part of a full report

    def __post_init__(self) -> None:
        r = "malformed_holders"
        check(nat(self.epoch) and nat(self.seq) and self.seq >= 1 and nat(self.part), r, "epoch/seq/part")
        chunk_list(self.added, r)
        chunk_list(self.removed, r)
        check(len(self.added) + len(self.removed) <= MAX_REPORT_CHUNKS, r, "too many chunks")
        check(not self.full or not self.removed, r, "a full report only adds")
        check(self.full or (self.part == 0 and self.last), r, "a delta has one part")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "holders", "e": self.epoch, "s": self.seq, "a": list(self.added),
                "r": list(self.removed), "f": self.full, "p": self.part, "l": self.last}

    @classmethod
    def from_wire(cls, obj: Any) -> HolderReport:
        check(isinstance(obj, dict) and obj.get("t") == "holders", "malformed_holders", "not a report")
        try:
            return cls(obj["e"], obj["s"], chunk_list(obj["a"], "malformed_holders"),
                       chunk_list(obj["r"], "malformed_holders"), bool(obj["f"]), obj["p"], bool(obj["l"]))
        except (KeyError, TypeError) as exc:
            raise ProtocolError("malformed_holders", str(exc)) from exc


@dataclass(frozen=True)
class RequestFullReport:
    """Master -> node: your reports have a gap (or I restarted); send everything you hold."""

    dest: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "holders_full"}

    @classmethod
    def from_wire(cls, obj: Any, dest: str) -> RequestFullReport:
        check(isinstance(obj, dict) and obj.get("t") == "holders_full", "malformed_holders", "not a request")
        return cls(dest)


class HolderReporter:
    """A node's side: what it holds, reported to its master incrementally and in full."""

    def __init__(self, epoch: int, chunks: Iterable[str] = (), now: float = 0.0, *,
                 delta_interval: float = 1.0, full_interval: float = 300.0, heartbeat: float = 10.0) -> None:
        self.epoch = epoch
        self.delta_interval = delta_interval
        self.full_interval = full_interval
        self.heartbeat = heartbeat
        self._held = set(chunks)
        self._seq = 0
        self._added: set[str] = set()
        self._removed: set[str] = set()
        self._want_full = True
        self._last_sent = now
        self._last_full = now
        self._out: list[HolderReport] = []

    def added(self, chunk: str) -> None:
        if chunk not in self._held:
            self._held.add(chunk)
            if chunk in self._removed:
                self._removed.discard(chunk)
            else:
                self._added.add(chunk)

    def removed(self, chunk: str) -> None:
        if chunk in self._held:
            self._held.discard(chunk)
            if chunk in self._added:
                self._added.discard(chunk)
            else:
                self._removed.add(chunk)

    def request_full(self) -> None:
        self._want_full = True

    def next_deadline(self) -> float:
        if self._want_full or len(self._added) + len(self._removed) >= MAX_REPORT_CHUNKS:
            return self._last_sent  # now
        due = self._last_full + self.full_interval
        if self._added or self._removed:
            due = min(due, self._last_sent + self.delta_interval)
        return min(due, self._last_sent + self.heartbeat)

    def _emit(self, **kw: Any) -> None:
        self._seq += 1
        self._out.append(HolderReport(self.epoch, self._seq, **kw))

    def handle_timer(self, now: float) -> None:
        if now < self.next_deadline():
            return
        if self._want_full or now >= self._last_full + self.full_interval:
            held = sorted(self._held)
            parts = [held[i:i + MAX_REPORT_CHUNKS] for i in range(0, len(held), MAX_REPORT_CHUNKS)] or [[]]
            for i, part in enumerate(parts):
                self._emit(added=tuple(part), full=True, part=i, last=i == len(parts) - 1)
            self._added.clear()
            self._removed.clear()
            self._want_full = False
            self._last_full = now
        else:  # a delta, or an empty one as heartbeat
            changes = [(h, True) for h in sorted(self._added)] + [(h, False) for h in sorted(self._removed)]
            for i in range(0, max(len(changes), 1), MAX_REPORT_CHUNKS):
                batch = changes[i:i + MAX_REPORT_CHUNKS]
                self._emit(added=tuple(h for h, a in batch if a), removed=tuple(h for h, a in batch if not a))
            self._added.clear()
            self._removed.clear()
        self._last_sent = now

    def drain(self) -> list[HolderReport]:
        out, self._out = self._out, []
        return out


@dataclass
class _NodeRecord:
    epoch: int
    seq: int
    chunks: set[str]
    expires: float
    pending: set[str] | None = None  # a full report being received
    asked_full_at: float | None = None
    first_hand: dict[str, float] = field(default_factory=dict)  # chunk -> when ``add`` recorded it


class HolderIndex:
    """A master's view of which nodes of its cluster hold which chunks."""

    def __init__(self, ttl: float = 30.0, *, resync_interval: float = 5.0, max_nodes: int = MAX_NODES,
                 max_chunks_per_node: int = MAX_CHUNKS_PER_NODE, first_hand_grace: float = 10.0) -> None:
        self.ttl = ttl
        self.resync_interval = resync_interval
        # a first-hand ``add`` outlives a full report for this long: that report may have left the
        # node before the chunk arrived, and forgetting the copy would grant a second WAN pull
        self.first_hand_grace = first_hand_grace
        self.max_nodes = max_nodes
        self.max_chunks_per_node = max_chunks_per_node
        self._nodes: OrderedDict[str, _NodeRecord] = OrderedDict()  # in order of expiry (ttl is fixed)
        self._by_chunk: dict[str, set[str]] = {}
        self._out: list[RequestFullReport] = []
        self.ignored = 0  # duplicate, stale or out-of-order reports
        self._answers = 0  # answers that listed a subset of a chunk's holders (where the next one starts)

    def _renew(self, node: str, rec: _NodeRecord, now: float) -> None:
        rec.expires = now + self.ttl
        self._nodes.move_to_end(node)

    def _set_chunks(self, node: str, rec: _NodeRecord, chunks: set[str]) -> None:
        for h in rec.chunks - chunks:
            nodes = self._by_chunk[h]
            nodes.discard(node)
            if not nodes:
                del self._by_chunk[h]
        for h in chunks - rec.chunks:
            self._by_chunk.setdefault(h, set()).add(node)
        rec.chunks = chunks

    def _ask_full(self, node: str, rec: _NodeRecord | None, now: float) -> None:
        if rec is not None:
            if rec.asked_full_at is not None and now < rec.asked_full_at + self.resync_interval:
                return
            rec.asked_full_at = now
        self._out.append(RequestFullReport(node))

    def receive(self, node: str, report: HolderReport, now: float) -> None:
        rec = self._nodes.get(node)
        if rec is not None and report.epoch < rec.epoch:
            self.ignored += 1
            return
        starts_full = report.full and report.part == 0
        in_order = rec is not None and report.epoch == rec.epoch and report.seq == rec.seq + 1
        if rec is not None and report.epoch == rec.epoch and report.seq <= rec.seq:
            self.ignored += 1  # a duplicate
            return
        if not (in_order or starts_full):
            self.ignored += 1  # a gap, or a new epoch that does not start with a full report
            if rec is not None:
                rec.pending = None
            self._ask_full(node, rec, now)
            return
        if rec is None:
            if len(self._nodes) >= self.max_nodes:
                raise ProtocolError("too_many_holders", f"more than {self.max_nodes} nodes report")
            rec = self._nodes[node] = _NodeRecord(report.epoch, 0, set(), now + self.ttl)
        if in_order and report.full and not starts_full and rec.pending is None:
            self.ignored += 1  # the middle of a full report whose start we missed
            self._ask_full(node, rec, now)
            return
        rec.epoch, rec.seq = report.epoch, report.seq
        self._renew(node, rec, now)
        if report.full:
            if starts_full:
                rec.pending = set()
            assert rec.pending is not None
            rec.pending.update(report.added)
            if len(rec.pending) > self.max_chunks_per_node:
                rec.pending = None
                raise ProtocolError("too_many_chunks", f"{node} reports more than {self.max_chunks_per_node}")
            if report.last:
                recent = {h for h, t in rec.first_hand.items() if now - t < self.first_hand_grace}
                rec.first_hand = {h: rec.first_hand[h] for h in recent}
                self._set_chunks(node, rec, rec.pending | recent)
                rec.pending = None
                rec.asked_full_at = None
        else:
            for h in (*report.added, *report.removed):  # the node's own word now stands for these
                rec.first_hand.pop(h, None)
            chunks = (rec.chunks | set(report.added)) - set(report.removed)
            if len(chunks) > self.max_chunks_per_node:
                raise ProtocolError("too_many_chunks", f"{node} reports more than {self.max_chunks_per_node}")
            self._set_chunks(node, rec, chunks)

    def add(self, node: str, chunk: str, now: float) -> None:
        """Record a holder we learned of first-hand (e.g. a WAN transfer it finished), ahead of its report."""
        rec = self._nodes.get(node)
        if rec is None:  # its first report is still on the way: hold the place until it comes
            if len(self._nodes) >= self.max_nodes:
                return
            rec = self._nodes[node] = _NodeRecord(-1, 0, set(), now + self.ttl)
        if chunk not in rec.chunks and len(rec.chunks) < self.max_chunks_per_node:
            self._set_chunks(node, rec, rec.chunks | {chunk})
            if len(rec.first_hand) < MAX_REPORT_CHUNKS:
                rec.first_hand[chunk] = now

    def drop(self, node: str, chunk: str) -> None:
        """A fetch found ``chunk`` missing at ``node``: forget that one record until the node reports it."""
        rec = self._nodes.get(node)
        if rec is not None and chunk in rec.chunks:
            self._set_chunks(node, rec, rec.chunks - {chunk})
            rec.first_hand.pop(chunk, None)

    def touch(self, node: str, now: float) -> None:
        rec = self._nodes.get(node)
        if rec is not None:
            self._renew(node, rec, now)

    def forget(self, node: str) -> None:
        rec = self._nodes.pop(node, None)
        if rec is not None:
            self._set_chunks(node, rec, set())

    def holders(self, chunk: str, now: float) -> list[str]:
        return sorted(n for n in self._by_chunk.get(chunk, ()) if self._nodes[n].expires > now)

    def answer(self, query: WhoHolds, cluster: str, now: float) -> Holders:
        """At most ``MAX_HOLDERS_LISTED`` holders per chunk; when a chunk has more, each answer starts
        further along the list, so a crowd of readers is spread over every holder, not the first few."""
        entries = []
        for c in query.chunks:
            live = self.holders(c, now)
            if len(live) > MAX_HOLDERS_LISTED:
                start = self._answers % len(live)
                self._answers += 1
                live = (live[start:] + live[:start])[:MAX_HOLDERS_LISTED]
            entries.append((c, tuple(live)))
        return Holders(cluster, tuple(entries))

    def chunks_of(self, node: str) -> frozenset[str]:
        rec = self._nodes.get(node)
        return frozenset(rec.chunks) if rec else frozenset()

    def holds_all(self, chunks: Iterable[str], now: float) -> bool:
        """Whether this cluster has a live holder of every chunk (then it holds the version)."""
        return all(self.holders(h, now) for h in chunks)

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def next_deadline(self) -> float | None:
        first = next(iter(self._nodes.values()), None)
        return None if first is None else first.expires

    def handle_timer(self, now: float) -> None:
        while self._nodes:
            node, rec = next(iter(self._nodes.items()))
            if rec.expires > now:
                break
            self.forget(node)

    def drain(self) -> list[RequestFullReport]:
        out, self._out = self._out, []
        return out


MAX_QUERY_CHUNKS = 1024  # chunks per WhoHolds
MAX_HOLDERS_LISTED = 16  # nodes per chunk in a Holders answer


@dataclass(frozen=True)
class WhoHolds:
    """A node (or another cluster's master) -> a master: which of your nodes hold these chunks?"""

    chunks: tuple[str, ...]

    def __post_init__(self) -> None:
        chunk_list(self.chunks, "malformed_holders", MAX_QUERY_CHUNKS)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "who_holds", "c": list(self.chunks)}

    @classmethod
    def from_wire(cls, obj: Any) -> WhoHolds:
        check(isinstance(obj, dict) and obj.get("t") == "who_holds", "malformed_holders", "not who_holds")
        return cls(chunk_list(obj.get("c"), "malformed_holders", MAX_QUERY_CHUNKS))


@dataclass(frozen=True)
class Holders:
    """A master's answer: for each chunk asked, live nodes of ``cluster`` holding it (maybe none)."""

    cluster: str
    entries: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        r = "malformed_holders"
        check(is_cluster_name(self.cluster), r, "cluster name")
        check(len(self.entries) <= MAX_QUERY_CHUNKS, r, "too many entries")
        for chunk, nodes in self.entries:
            check(is_chunk_hash(chunk) and isinstance(nodes, tuple) and len(nodes) <= MAX_HOLDERS_LISTED, r, "entry")
            check(all(isinstance(n, str) and 0 < len(n) <= 80 for n in nodes), r, "node id")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "holders_of", "k": self.cluster, "e": [[c, list(n)] for c, n in self.entries]}

    @classmethod
    def from_wire(cls, obj: Any) -> Holders:
        check(isinstance(obj, dict) and obj.get("t") == "holders_of", "malformed_holders", "not holders_of")
        try:
            entries = tuple((c, tuple(n)) for c, n in obj["e"])
            return cls(obj["k"], entries)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("malformed_holders", str(exc)) from exc


@dataclass(frozen=True)
class VersionHeld:
    """A master -> the key's home: my cluster holds (``held``) or no longer holds this version."""

    key: str
    version: int
    cluster: str
    held: bool = True

    def __post_init__(self) -> None:
        try:
            validate_key(self.key)
        except InvalidKey as exc:
            raise ProtocolError("malformed_holders", exc.detail) from exc
        check(nat(self.version) and self.version >= 1, "malformed_holders", "version")
        check(is_cluster_name(self.cluster), "malformed_holders", "cluster name")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "version_held", "k": self.key, "v": self.version, "c": self.cluster, "h": self.held}

    @classmethod
    def from_wire(cls, obj: Any) -> VersionHeld:
        check(isinstance(obj, dict) and obj.get("t") == "version_held", "malformed_holders", "not version_held")
        try:
            return cls(obj["k"], obj["v"], obj["c"], bool(obj["h"]))
        except KeyError as exc:
            raise ProtocolError("malformed_holders", str(exc)) from exc


class VersionHolders:
    """At a key's home: which clusters hold each version (soft state, bounded, oldest dropped first)."""

    def __init__(self, ttl: float = 600.0, max_records: int = MAX_VERSION_RECORDS) -> None:
        self.ttl = ttl
        self.max_records = max_records
        self._expiry: OrderedDict[tuple[str, int, str], float] = OrderedDict()  # in order of expiry
        self._by_version: dict[tuple[str, int], set[str]] = {}

    def _drop(self, record: tuple[str, int, str]) -> None:
        self._expiry.pop(record, None)
        clusters = self._by_version.get(record[:2])
        if clusters is not None:
            clusters.discard(record[2])
            if not clusters:
                del self._by_version[record[:2]]

    def receive(self, msg: VersionHeld, now: float) -> None:
        record = (msg.key, msg.version, msg.cluster)
        if not msg.held:
            self._drop(record)
            return
        self._expiry[record] = now + self.ttl
        self._expiry.move_to_end(record)
        self._by_version.setdefault(record[:2], set()).add(msg.cluster)
        while len(self._expiry) > self.max_records:
            self._drop(next(iter(self._expiry)))

    def clusters(self, key: str, version: int, now: float) -> list[str]:
        return sorted(c for c in self._by_version.get((key, version), ())
                      if self._expiry[(key, version, c)] > now)

    def forget_cluster(self, cluster: str) -> None:
        for record in [r for r in self._expiry if r[2] == cluster]:
            self._drop(record)

    def next_deadline(self) -> float | None:
        return next(iter(self._expiry.values()), None)

    def handle_timer(self, now: float) -> None:
        while self._expiry:
            record, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            self._drop(record)
