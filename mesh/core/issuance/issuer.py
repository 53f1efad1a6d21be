"""The per-master issuance core: entry point for commits, home of some keys, replica of others.

Per key it runs multi-Paxos over the key's replica set with one slot in flight: a would-be home
prepares once (ballot ``(roster epoch, round, node)``), re-proposes the highest slot it finds so
that slot is settled on the current replica set, then issues ``last + 1`` per commit with one
accept round each. A version is acknowledged only once a majority of the current replica set
has persisted it. See the package docstring for the verbs and the safety argument.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dht.placement import Master, Placement, key_id
from mesh.core.codec import unpack
from mesh.core.identity import Identity
from mesh.core.issuance.messages import (
    MAX_HOPS,
    Accept,
    Accepted,
    Ballot,
    Commit,
    CommitReply,
    Entry,
    Handoff,
    HandoffDone,
    Message,
    Nack,
    Prepare,
    Promise,
    manifest_hash,
)
from mesh.core.issuance.records import (
    AcceptRecord,
    Done,
    Effect,
    Persist,
    PromiseRecord,
    Record,
    RoundRecord,
    Send,
)
from mesh.core.keys import validate_key
from mesh.core.manifest import Draft, Manifest, issue
from mesh.errors import (
    Conflict,
    EltonError,
    ProtocolError,
    ReplicasUnreachable,
    Unavailable,
    from_json,
)


@dataclass(frozen=True)
class IssuerConfig:
    replicas: int = 3
    replica_scope: str = "mesh"  # "mesh" | "cluster"
    commit_timeout: float = 10.0  # a commit fails after this long, naming the home and the unreachable
    retry_interval: float = 0.5  # resend prepares/accepts/commits to whoever has not answered
    vnodes: int = 128
    max_requests: int = 10_000  # commits submitted here and not yet done
    max_jobs_per_key: int = 1_000  # commits queued at the home of one key
    max_leads: int = 100_000  # keys this master is acting as home for
    max_recent_replies: int = 4_096  # answers kept to re-send when a Commit is retried
    max_cache: int = 100_000  # manifests cached
    max_handoffs: int = 100_000  # keys this master is handing to a new home
    handoff_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.replica_scope not in ("mesh", "cluster"):
            raise ValueError("replicas >= 1 and replica_scope in (mesh, cluster)")
        if not 0 < self.retry_interval < self.commit_timeout:
            raise ValueError("0 < retry_interval < commit_timeout")


MAX_MANIFEST = 64 * 1024 * 1024  # as Manifest.decode
MAX_REMEMBERED_LISTS = 65536  # keys whose replica list is kept between roster changes


def majority(n: int) -> int:
    return n // 2 + 1


def _from_sender(sender: str, blob: bytes, trusted: bool = False) -> Manifest:
    """A manifest from master ``sender``, decoded; its signature checked unless ``trusted`` or the
    sender issued it. The frame that carried it is signed by the sender and checked by the runtime
    before ``receive``, so the manifest's own signature adds nothing then. One relayed by anyone else
    (a new home re-proposing an old home's slot) is checked, and every reader checks it again."""
    manifest = Manifest.from_wire(unpack(blob, MAX_MANIFEST))
    return manifest if trusted or manifest.issuer == sender else manifest.verify()


@dataclass
class _Request:
    """A commit submitted at this master (we are its origin)."""

    key: str
    draft: Draft
    expected_parent: int | None
    deadline: float
    target: str | None = None
    next_send: float = 0.0


@dataclass
class _Job:
    """A commit queued at the home."""

    request_id: str
    origin: str
    draft: Draft
    expected_parent: int | None
    deadline: float
    hops: int
    answered: bool = False


@dataclass
class _Lead:
    """This master acting as the home of one key."""

    phase: str = "idle"  # idle -> prepare -> accept <-> ready; any nack -> idle
    ballot: Ballot | None = None
    epoch: int = -1
    prepare_sets: list[tuple[str, ...]] = field(default_factory=list)
    accept_set: tuple[str, ...] = ()
    promises: dict[str, Entry | None] = field(default_factory=dict)
    acks: set[str] = field(default_factory=set)
    inflight: Entry | None = None
    issued: tuple[Entry, Manifest] | None = None  # the entry this master just signed, and its manifest
    job: _Job | None = None
    last: int = 0
    jobs: deque[_Job] = field(default_factory=deque)
    next_retry: float = 0.0
    backoff_until: float = 0.0
    seen_round: int = 0
    stragglers: dict[str, Entry] = field(default_factory=dict)  # replicas that missed a chosen slot
    stragglers_until: float = 0.0
    waiters: set[str] = field(default_factory=set)


@dataclass
class _Replica:
    promised: Ballot | None = None
    top: Entry | None = None


@dataclass
class _Nudge:
    target: str
    epoch: int
    next_send: float
    deadline: float


class Issuer:
    """One master's issuance state machine. Drive it with the verbs of the package docstring."""

    def __init__(self, identity: Identity, config: IssuerConfig | None = None,
                 rng: random.Random | None = None, records: Iterable[Record] = ()) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.config = config or IssuerConfig()
        self.rng = rng or random.Random(0)
        self.epoch = -1
        self._placement = Placement([], self.config.vnodes)
        self._lists: dict[str, tuple[str, ...]] = {}  # key -> its list in the current roster
        self._previous: Placement | None = None
        self._live: set[str] = set()
        self._replica: dict[str, _Replica] = {}
        self._round_floor = 0
        self._leads: dict[str, _Lead] = {}
        self._requests: dict[str, _Request] = {}
        self._recent: OrderedDict[str, CommitReply] = OrderedDict()
        self._cache: OrderedDict[tuple[str, int], Manifest] = OrderedDict()
        self._nudges: dict[str, _Nudge] = {}
        self._out: list[Effect] = []
        self._persist: list[Record] = []
        self._local: deque[Message] = deque()
        self._restore(records)

    # ---- durable state -------------------------------------------------------------------

    def _restore(self, records: Iterable[Record]) -> None:
        for rec in records:
            if isinstance(rec, RoundRecord):
                self._round_floor = max(self._round_floor, rec.round)
            elif isinstance(rec, PromiseRecord):
                st = self._replica.setdefault(rec.key, _Replica())
                if st.promised is None or rec.ballot > st.promised:
                    st.promised = rec.ballot
            elif isinstance(rec, AcceptRecord):
                st = self._replica.setdefault(rec.key, _Replica())
                if st.promised is None or rec.entry.ballot > st.promised:
                    st.promised = rec.entry.ballot
                if st.top is None or (rec.entry.version, rec.entry.ballot) > (st.top.version, st.top.ballot):
                    st.top = rec.entry

    def _save(self, *records: Record) -> None:
        self._persist.extend(records)

    # ---- membership ----------------------------------------------------------------------

    def set_roster(self, epoch: int, masters: Sequence[Master], now: float) -> None:
        """Install roster ``epoch`` (the admitted masters). Feed every epoch, in order."""
        if epoch <= self.epoch:
            return
        old = self._placement if self.epoch >= 0 else None
        self.epoch = epoch
        self._previous = old
        self._placement = Placement(masters, self.config.vnodes)
        self._lists.clear()
        for key, lead in list(self._leads.items()):
            self._abandon(key, lead, now, backoff=False)
        if old is None:
            return
        for key in self._replica:
            if len(self._nudges) >= self.config.max_handoffs:
                break
            kid = key_id(key)
            before = old.replicas_of_id(kid, self.config.replicas, self.config.replica_scope)
            after = self._list_of_id(kid)
            if set(before) != set(after) and after:
                target = self.home_of(key)
                if target is not None:
                    self._nudges[key] = _Nudge(target, epoch, now, now + self.config.handoff_timeout)
        self._pump(now)

    def set_live(self, live: Iterable[str], now: float) -> None:
        """The masters the failure detector currently holds alive (this one always is)."""
        self._live = set(live)

    def _list_of_id(self, kid: str) -> list[str]:
        return self._placement.replicas_of_id(kid, self.config.replicas, self.config.replica_scope)

    def replica_set(self, key: str) -> list[str]:
        """The key's list in the current roster: home first, then its replicas.

        Remembered per key until the roster changes: every commit asks for it (its route, its
        home's check) and a walk of the ring costs more than the rest of routing together."""
        found = self._lists.get(key)
        if found is None:
            if len(self._lists) >= MAX_REMEMBERED_LISTS:
                self._lists.clear()
            found = self._lists[key] = tuple(self._list_of_id(key_id(key)))
        return list(found)

    def home_of(self, key: str) -> str | None:
        """The first master of the key's list that is alive in this master's view."""
        for nid in self.replica_set(key):
            if nid == self.node_id or nid in self._live:
                return nid
        return None

    # ---- entry point ---------------------------------------------------------------------

    def submit(self, request_id: str, draft: Draft, expected_parent: int | None, now: float) -> None:
        """A host of this cluster commits ``draft``; a ``Done`` for ``request_id`` follows."""
        validate_key(draft.key)
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} is already in flight")
        if len(self._requests) >= self.config.max_requests:
            self._out.append(Done(request_id, draft.key, error=Unavailable("too many commits in flight")))
            return
        self._requests[request_id] = _Request(draft.key, draft, expected_parent, now + self.config.commit_timeout)
        self._route(request_id, now)
        self._pump(now)

    def _route(self, rid: str, now: float) -> None:
        req = self._requests[rid]
        req.target = self.home_of(req.key)
        req.next_send = now + 2 * self.config.retry_interval
        if req.target is None:
            self._finish(rid, None, ReplicasUnreachable(f"key {req.key!r}: no master of its replica set is alive"))
        elif req.target == self.node_id:
            self._local.append(Commit(rid, self.node_id, req.draft, req.expected_parent,
                                      max(req.deadline - now, 1e-3)))
        else:
            self._send(req.target, Commit(rid, self.node_id, req.draft, req.expected_parent,
                                          max(req.deadline - now, 1e-3)))

    def _finish(self, rid: str, manifest: Manifest | None, error: EltonError | None) -> None:
        req = self._requests.pop(rid, None)
        if req is not None:
            self._out.append(Done(rid, req.key, manifest, error))

    # ---- the four verbs ------------------------------------------------------------------

    def receive(self, sender: str, msg: Message, now: float) -> None:
        """Feed one decoded message from master ``sender`` (authenticated by the envelope)."""
        self._dispatch(sender, msg, now)
        self._pump(now)

    def _pump(self, now: float) -> None:
        while self._local:
            self._dispatch(self.node_id, self._local.popleft(), now)

    def drain(self) -> list[Effect]:
        """Effects to carry out in order; a Persist comes first and must be durable before the rest."""
        out = self._out
        if self._persist:
            out = [Persist(tuple(self._persist)), *out]
        self._out, self._persist = [], []
        return out

    def next_deadline(self) -> float | None:
        times = [r.deadline for r in self._requests.values()]
        times += [r.next_send for r in self._requests.values() if r.target not in (None, self.node_id)]
        for lead in self._leads.values():
            if lead.phase in ("prepare", "accept") or lead.stragglers:
                times.append(lead.next_retry)
            if lead.phase == "idle" and (lead.jobs or lead.waiters):
                times.append(lead.backoff_until)
            times += [j.deadline for j in lead.jobs]
            if lead.job is not None and not lead.job.answered:
                times.append(lead.job.deadline)
        for n in self._nudges.values():
            times += [n.next_send, n.deadline]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for rid, req in list(self._requests.items()):
            if now >= req.deadline:
                self._finish(rid, None, ReplicasUnreachable(
                    f"key {req.key!r}: no answer from its home {_short(req.target)} within "
                    f"{self.config.commit_timeout:g} s"))
            elif req.target not in (None, self.node_id) and now >= req.next_send:
                self._route(rid, now)
        for key, lead in list(self._leads.items()):
            self._expire_jobs(key, lead, now)
            if lead.phase == "idle" and (lead.jobs or lead.waiters) and now >= lead.backoff_until:
                self._start_prepare(key, lead, now)
            elif lead.phase in ("prepare", "accept", "ready") and now >= lead.next_retry:
                self._resend(key, lead, now)
            if lead.phase == "idle" and not lead.jobs and not lead.waiters:
                del self._leads[key]
        for key, nudge in list(self._nudges.items()):
            if now >= nudge.deadline:
                del self._nudges[key]
            elif now >= nudge.next_send:
                nudge.next_send = now + 2 * self.config.retry_interval
                target = self.home_of(key) or nudge.target
                self._send(target, Handoff(key, nudge.epoch))
        self._pump(now)

    # ---- messages ------------------------------------------------------------------------

    def _dispatch(self, sender: str, msg: Message, now: float) -> None:
        match msg:
            case Commit():
                self._on_commit(sender, msg, now)
            case CommitReply():
                self._on_reply(sender, msg)
            case Prepare():
                self._on_prepare(sender, msg)
            case Promise():
                self._on_promise(sender, msg, now)
            case Accept():
                self._on_accept(sender, msg)
            case Accepted():
                self._on_accepted(sender, msg, now)
            case Nack():
                self._on_nack(sender, msg, now)
            case Handoff():
                self._on_handoff(sender, msg, now)
            case HandoffDone():
                nudge = self._nudges.get(msg.key)
                if nudge is not None and msg.epoch >= nudge.epoch:
                    del self._nudges[msg.key]
            case _:
                raise ProtocolError("unexpected_message", type(msg).__name__)

    def _send(self, dest: str, msg: Message) -> None:
        if dest == self.node_id:
            self._local.append(msg)
        else:
            self._out.append(Send(dest, msg))

    # replica side

    def _on_prepare(self, sender: str, msg: Prepare) -> None:
        st = self._replica.setdefault(msg.key, _Replica())
        if st.promised is not None and msg.ballot < st.promised:
            self._send(sender, Nack(msg.key, msg.ballot, st.promised))
            return
        if st.promised != msg.ballot:
            st.promised = msg.ballot
            self._save(PromiseRecord(msg.key, msg.ballot))
        self._send(sender, Promise(msg.key, msg.ballot, st.top))

    def _on_accept(self, sender: str, msg: Accept) -> None:
        entry = msg.entry
        st = self._replica.setdefault(msg.key, _Replica())
        if st.promised is not None and entry.ballot < st.promised:
            self._send(sender, Nack(msg.key, entry.ballot, st.promised))
            return
        manifest = self._manifest_of(sender, msg.key, entry)
        if manifest.key != msg.key or manifest.version != entry.version:
            raise ProtocolError("bad_accept", "manifest does not match the slot")
        if st.promised != entry.ballot:
            st.promised = entry.ballot
            self._save(PromiseRecord(msg.key, entry.ballot))
        if st.top is None or (entry.version, entry.ballot) >= (st.top.version, st.top.ballot):
            st.top = entry
        self._save(AcceptRecord(msg.key, entry))
        self._send(sender, Accepted(msg.key, entry.ballot, entry.version))

    # home side

    def _on_commit(self, sender: str, msg: Commit, now: float) -> None:
        rid = msg.request_id
        if rid in self._recent:
            self._send(msg.origin, self._recent[rid])
            return
        lead = self._leads.get(msg.key)
        if lead is not None and (any(j.request_id == rid for j in lead.jobs)
                                 or (lead.job is not None and lead.job.request_id == rid)):
            return  # a retry of a commit in progress
        home = self.home_of(msg.key)
        if home is not None and home != self.node_id and msg.hops < MAX_HOPS - 1 and sender != home:
            self._send(home, Commit(rid, msg.origin, msg.draft, msg.expected_parent, msg.timeout, msg.hops + 1))
            return
        job = _Job(rid, msg.origin, msg.draft, msg.expected_parent, now + msg.timeout * 0.95, msg.hops)
        self._enqueue(job, now)

    def _enqueue(self, job: _Job, now: float) -> None:
        key = job.draft.key
        lead = self._leads.get(key)
        if lead is None:
            if not self._make_room():
                self._answer(job, error=Unavailable("this master is home for too many busy keys"))
                return
            lead = self._leads[key] = _Lead()
        if len(lead.jobs) >= self.config.max_jobs_per_key:
            self._answer(job, error=Unavailable(f"too many commits queued for key {key!r}"))
            return
        lead.jobs.append(job)
        self._advance(key, lead, now)

    def _make_room(self) -> bool:
        """Keep leads under their limit by forgetting a quiet one (it re-prepares when next used)."""
        if len(self._leads) < self.config.max_leads:
            return True
        for key, lead in self._leads.items():
            if not lead.jobs and lead.job is None and lead.inflight is None and not lead.waiters:
                del self._leads[key]
                return True
        return False

    def _answer(self, job: _Job, manifest: bytes = b"", error: EltonError | None = None) -> None:
        if job.answered:
            return
        job.answered = True
        reply = CommitReply(job.request_id, job.draft.key, manifest,
                            error.code if error else "", error.message[:1000] if error else "")
        self._recent[job.request_id] = reply
        while len(self._recent) > self.config.max_recent_replies:
            self._recent.popitem(last=False)
        self._send(job.origin, reply)

    def _on_reply(self, sender: str, msg: CommitReply) -> None:
        req = self._requests.get(msg.request_id)
        if req is None or req.key != msg.key:
            return
        if msg.error_code:
            self._finish(msg.request_id, None, from_json({"error": msg.error_code, "message": msg.error_message}, 503))
            return
        # from this master (home of the key): the manifest it has just seen chosen, which it signed
        # itself or checked when it accepted it
        manifest = _from_sender(sender, msg.manifest, trusted=sender == self.node_id)
        if manifest.key != req.key:
            raise ProtocolError("bad_reply", "manifest of another key")
        self._remember(manifest)
        self._finish(msg.request_id, manifest, None)

    def _advance(self, key: str, lead: _Lead, now: float) -> None:
        if lead.phase == "idle":
            if (lead.jobs or lead.waiters) and now >= lead.backoff_until:
                self._start_prepare(key, lead, now)
            return
        if lead.phase != "ready":
            return
        while lead.jobs:
            job = lead.jobs.popleft()
            if job.answered:
                continue
            if job.expected_parent is not None and job.expected_parent != lead.last:
                self._answer(job, error=Conflict(
                    f"key {key!r} is at version {lead.last}, not {job.expected_parent}"))
                continue
            signed = issue(job.draft, lead.last + 1, lead.last, now, self.identity)
            manifest = signed.encode()
            assert lead.ballot is not None
            lead.inflight = Entry(lead.last + 1, lead.ballot, manifest_hash(manifest), manifest, job.request_id)
            lead.issued = (lead.inflight, signed)
            lead.job = job
            self._send_accepts(key, lead, now)
            return

    def _send_accepts(self, key: str, lead: _Lead, now: float) -> None:
        assert lead.inflight is not None
        lead.phase = "accept"
        lead.acks = set()
        lead.next_retry = now + self.config.retry_interval
        for nid in lead.accept_set:
            self._send(nid, Accept(key, lead.inflight))

    def _start_prepare(self, key: str, lead: _Lead, now: float) -> None:
        kid = key_id(key)
        accept_set = tuple(self._list_of_id(kid))
        if not accept_set:
            for job in lead.jobs:
                self._answer(job, error=ReplicasUnreachable(f"key {key!r}: no roster installed"))
            lead.jobs.clear()
            return
        sets = [accept_set]
        if self._previous is not None:
            before = tuple(self._previous.replicas_of_id(kid, self.config.replicas, self.config.replica_scope))
            if before and set(before) != set(accept_set):
                sets.append(before)
        self._round_floor = max(self._round_floor, lead.seen_round) + 1
        self._save(RoundRecord(self._round_floor))
        lead.ballot = Ballot(max(self.epoch, 0), self._round_floor, self.node_id)
        lead.epoch = self.epoch
        lead.phase = "prepare"
        lead.prepare_sets = sets
        lead.accept_set = accept_set
        lead.promises = {}
        lead.inflight = None
        lead.issued = None
        lead.stragglers = {}
        lead.next_retry = now + self.config.retry_interval
        for nid in sorted(set().union(*sets)):
            self._send(nid, Prepare(key, lead.ballot))

    def _resend(self, key: str, lead: _Lead, now: float) -> None:
        lead.next_retry = now + self.config.retry_interval
        assert lead.ballot is not None
        if lead.phase == "prepare":
            for nid in sorted(set().union(*lead.prepare_sets) - set(lead.promises)):
                self._send(nid, Prepare(key, lead.ballot))
        elif lead.phase == "accept":
            assert lead.inflight is not None
            for nid in lead.accept_set:
                if nid not in lead.acks:
                    self._send(nid, Accept(key, lead.inflight))
        if now >= lead.stragglers_until:
            lead.stragglers = {}
        for nid, entry in lead.stragglers.items():
            self._send(nid, Accept(key, entry))

    def _on_promise(self, sender: str, msg: Promise, now: float) -> None:
        lead = self._leads.get(msg.key)
        if lead is None or lead.phase != "prepare" or msg.ballot != lead.ballot:
            return
        lead.promises[sender] = msg.top
        if not all(sum(n in lead.promises for n in s) >= majority(len(s)) for s in lead.prepare_sets):
            return
        tops = [t for t in lead.promises.values() if t is not None]
        if not tops:
            lead.last = 0
            lead.phase = "ready"
            self._settled(msg.key, lead)
            self._advance(msg.key, lead, now)
            return
        best = max(tops, key=lambda t: (t.version, t.ballot))
        lead.last = best.version - 1
        lead.inflight = Entry(best.version, lead.ballot, best.manifest_hash, best.manifest, best.request_id)
        lead.issued = None
        # the commit behind the re-proposed slot may be queued here (our own abandoned ballot, or a
        # retry forwarded to us): it is answered with this slot, not issued again as the next version
        lead.job = None
        if best.request_id:
            for job in list(lead.jobs):
                if job.request_id == best.request_id:
                    lead.jobs.remove(job)
                    lead.job = job
                    break
        self._send_accepts(msg.key, lead, now)

    def _manifest_of(self, sender: str, key: str, entry: Entry) -> Manifest:
        """The manifest of an entry, as ``_from_sender`` has it, or the one this master signed just now
        (the very entry it is proposing as home, accepted here or chosen): a replica saves one
        signature check per accepted version."""
        lead = self._leads.get(key)
        if sender == self.node_id and lead is not None and lead.issued is not None and lead.issued[0] is entry:
            return lead.issued[1]
        return _from_sender(sender, entry.manifest)

    def _on_accepted(self, sender: str, msg: Accepted, now: float) -> None:
        lead = self._leads.get(msg.key)
        if lead is None or msg.ballot != lead.ballot:
            return
        straggling = lead.stragglers.get(sender)
        if straggling is not None and msg.version >= straggling.version:
            del lead.stragglers[sender]
        entry = lead.inflight
        if lead.phase != "accept" or entry is None or msg.version != entry.version or sender not in lead.accept_set:
            return
        lead.acks.add(sender)
        if len(lead.acks) < majority(len(lead.accept_set)):
            return
        # chosen: a majority of the current replica set holds it durably
        lead.last = entry.version
        for nid in lead.accept_set:
            if nid not in lead.acks:
                lead.stragglers[nid] = entry
        lead.stragglers_until = now + self.config.commit_timeout
        self._remember(self._manifest_of(self.node_id, msg.key, entry))
        job, lead.job, lead.inflight, lead.issued = lead.job, None, None, None
        lead.phase = "ready"
        if job is not None:
            self._answer(job, manifest=entry.manifest)
        else:
            self._settled(msg.key, lead)
        self._advance(msg.key, lead, now)

    def _settled(self, key: str, lead: _Lead) -> None:
        for nid in lead.waiters:
            self._send(nid, HandoffDone(key, lead.epoch))
        lead.waiters.clear()

    def _on_nack(self, sender: str, msg: Nack, now: float) -> None:
        lead = self._leads.get(msg.key)
        if lead is None or msg.ballot != lead.ballot or lead.phase not in ("prepare", "accept"):
            return
        lead.seen_round = max(lead.seen_round, msg.promised.round)
        holder = msg.promised.node
        if holder != self.node_id and holder in self._live:
            # another master holds the key: hand our queued commits to it
            if lead.job is not None:
                lead.jobs.appendleft(lead.job)
                lead.job = None
            keep: deque[_Job] = deque()
            for job in lead.jobs:
                if job.hops + 1 < MAX_HOPS and not job.answered:
                    self._send(holder, Commit(job.request_id, job.origin, job.draft, job.expected_parent,
                                              max(job.deadline - now, 1e-3), job.hops + 1))
                else:
                    keep.append(job)
            lead.jobs = keep
        self._abandon(msg.key, lead, now, backoff=True)

    def _abandon(self, key: str, lead: _Lead, now: float, backoff: bool) -> None:
        """Stop acting as home under the current ballot; queued commits retry with a new one."""
        if lead.job is not None:
            lead.jobs.appendleft(lead.job)
            lead.job = None
        lead.phase = "idle"
        lead.inflight = None
        lead.issued = None
        lead.stragglers = {}
        lead.backoff_until = now + (self.rng.uniform(0.5, 1.5) * self.config.retry_interval if backoff else 0.0)

    def _expire_jobs(self, key: str, lead: _Lead, now: float) -> None:
        expired = [j for j in lead.jobs if now >= j.deadline]
        if lead.job is not None and now >= lead.job.deadline:
            expired.append(lead.job)
        if not expired:
            return
        if lead.phase == "prepare":
            waiting = set().union(*lead.prepare_sets) - set(lead.promises)
            need = "a majority of " + " and of ".join(_names(s) for s in lead.prepare_sets)
        else:
            waiting = set(lead.accept_set) - lead.acks
            need = "a majority of " + _names(lead.accept_set)
        err = ReplicasUnreachable(f"key {key!r}: home {_short(self.node_id)} could not reach {need}; "
                                  f"unreachable: {_names(sorted(waiting))}")
        for job in expired:
            self._answer(job, error=err)
        lead.jobs = deque(j for j in lead.jobs if not j.answered)

    def _on_handoff(self, sender: str, msg: Handoff, now: float) -> None:
        if msg.epoch != self.epoch:
            return  # one of us has not installed that roster yet; the sender retries
        lead = self._leads.get(msg.key)
        if lead is None:
            if not self._make_room():
                return
            lead = self._leads[msg.key] = _Lead()
        if lead.phase in ("ready", "accept") and lead.epoch == self.epoch and lead.inflight is None:
            self._send(sender, HandoffDone(msg.key, self.epoch))
            return
        lead.waiters.add(sender)
        self._advance(msg.key, lead, now)

    # ---- cache ---------------------------------------------------------------------------

    def _remember(self, manifest: Manifest) -> None:
        self._cache[(manifest.key, manifest.version)] = manifest
        self._cache.move_to_end((manifest.key, manifest.version))
        while len(self._cache) > self.config.max_cache:
            self._cache.popitem(last=False)

    def learn(self, manifest: Manifest) -> None:
        """Cache a manifest seen elsewhere (gossip, a reader); it is verified first."""
        self._remember(manifest.verify())

    def cached(self, key: str, version: int) -> Manifest | None:
        return self._cache.get((key, version))

    # ---- introspection (runtime, simulator, tests) ---------------------------------------

    def handoffs_pending(self) -> int:
        """Keys still being handed to a new home; a leaving master waits for zero."""
        return len(self._nudges)

    def requests_in_flight(self) -> int:
        return len(self._requests)

    def last_known(self, key: str) -> int:
        """The highest version of ``key`` this master knows to be issued (0 if none)."""
        lead = self._leads.get(key)
        cached = max((v for (k, v) in self._cache if k == key), default=0)
        return max(cached, lead.last if lead else 0)


def _short(node: str | None) -> str:
    return node[:12] if node else "(none)"


def _names(nodes: Iterable[str]) -> str:
    return "[" + ", ".join(_short(n) for n in nodes) + "]"
