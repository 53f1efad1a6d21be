"""The issuance runtime: drives the sans-IO ``Issuer`` over the gossip mesh, on a real disk.

One ``IssuerService`` per eltond. On a master (role ``master`` or ``both``) it owns the
``Issuer``: loads its records from ``meta.sqlite``, feeds it the roster and liveness read from
the gossip layer, carries out its effects, and pumps it on one re-armed timer. On a node (role
``node``) it forwards each commit to a master of its own cluster (TCP kind ``commit``).

Effects keep the core's rule: a ``Persist`` is group-committed through ``MetaStore.write``, and
no ``Send``/``Done`` drained after it goes out before it (and every earlier one) is durable.
Sends go as TCP frames over one long-lived stream per destination master (kind
``issuance_stream``: the first frame opens it like any gossip TCP request, a signed envelope that
also offers the stream's key; more frames follow on the same connection, each with a MAC under
that key (``mesh.core.stream_auth``), none is answered; replies travel as frames of their own,
on the other master's stream to this one). One task per
destination writes a frame whenever messages wait; messages produced while a frame is written
wait in the link's bounded buffer and leave together in the next frame (batching grows with load,
like the group commit). A stream idle for ``STREAM_IDLE`` is closed. Beyond ``max_buffered``
messages are dropped and counted; a frame that cannot be written is dropped and counted; the core
resends on its retry timer. Nothing queues without bound. A receiver keeps at most
``MAX_SESSIONS`` streams open (each holds one of the gossip port's TCP slots); beyond, it takes
the first frame and closes, and the sender opens a new stream for its next frame. The one-shot
kind ``issuance`` (one frame, one ``{"ok": ...}`` reply) is still served.

One exception to the Persist-first rule: an ``Accept`` leaves at once. It is a proposer's
message; its ballot's round was made durable before the ``Prepare`` that preceded it, and what
waits in the Persist beside it is only this master's own acceptor record, whose
acknowledgement (the ``Done``/``CommitReply``) still waits for it. So the home's fsync and the
replicas' run in parallel instead of one after the other.

Roster epochs. Every master must map an epoch number to the same roster. The roster is the set
of admitted masters (certificates with role master/both, with their clusters), and the epoch is
``masters + 2 * revocations``: certificates only accumulate and a revocation removes at most one
certificate, so the number only grows, and it is the same on every master that holds the same
certificates and revocations, whether or not it ever saw the certificate a revocation removed.
Two masters could transiently hold the same count with different sets (two admissions gossiped
in different orders); each frame therefore carries ``(epoch, roster digest)`` and a master drops
frames whose tag differs from its own, so masters only ever talk Paxos with masters that agree
on the roster of the epoch. Such a split heals when both learn both certificates (a higher
epoch). Not supported: changing the role or cluster of an admitted host in place (revoke it and
admit a new key), and admitting several masters at once before the previous one settled (the
core prepares over the current and previous roster only).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import blake3

from dht.placement import Master
from mesh.core import stream_auth
from mesh.core.admission import AdmissionState
from mesh.core.codec import MAX_STREAM_MESSAGE, open_envelope, pack
from mesh.core.identity import Identity
from mesh.core.issuance import (
    Accept,
    CommitReply,
    Done,
    Effect,
    Issuer,
    IssuerConfig,
    Message,
    Persist,
    Promise,
    Send,
    message_from_wire,
    message_to_wire,
)
from mesh.core.issuance.messages import draft_from_wire, draft_to_wire
from mesh.core.keys import validate_key
from mesh.core.manifest import Draft, Manifest
from mesh.core.membership import MemberInfo, MemberState
from mesh.errors import (
    Conflict,
    EltonError,
    InvalidRequest,
    ProtocolError,
    ReplicasUnreachable,
    Unavailable,
)
from mesh.runtime.gossip import GossipService, StreamRequest, read_frame, write_frame
from mesh.runtime.issuance_store import IssuanceStore, PendingCommit, PendingStore
from mesh.store.meta import MetaStore

log = logging.getLogger("elton.issuance")

MASTER_ROLES = ("master", "both")
FRAME_KIND = "issuance"
STREAM_KIND = "issuance_stream"
STREAM_IDLE = 10.0  # a sender closes a stream it has not written to for this long
STREAM_RECV_IDLE = 30.0  # a receiver closes a stream silent for this long (the sender closes first)
MAX_SESSIONS = 32  # incoming streams kept open; MAX_STREAMS of the gossip port is 64
COMMIT_KIND = "commit"
MAX_FRAME_MESSAGES = 64
MAX_FRAME_BYTES = 4 << 20  # manifests ride in accepts and promises: keep frames well under the stream limit
LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)

IssueFn = Callable[[Draft, "int | None"], Awaitable[Manifest]]


def _fail_if_pending(fut: asyncio.Future[Any], key: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ReplicasUnreachable(f"key {key!r}: no answer within {timeout:g} s"))


@dataclass(frozen=True)
class IssuanceSettings:
    """What the daemon's config feeds the service (see the report for the Config names)."""

    replicas: int = 3
    replica_scope: str = "mesh"
    commit_timeout: float = 10.0
    retry_interval: float = 0.5
    send_timeout: float = 2.0  # one frame to a master
    frames_per_master: int = 4  # unused since frames stream over one connection (kept for configs that set it)
    max_buffered: int = 4096  # messages waiting for one master; beyond, dropped and counted
    poll_interval: float = 0.1  # membership (roster, liveness, addresses) re-read this often
    pending_retry: float = 2.0  # queued commits are retried this often while their key is reachable

    def issuer_config(self) -> IssuerConfig:
        return IssuerConfig(replicas=self.replicas, replica_scope=self.replica_scope,
                            commit_timeout=self.commit_timeout, retry_interval=self.retry_interval)


@dataclass(frozen=True)
class Roster:
    """The admitted masters, numbered by an epoch every master computes alike (module docstring)."""

    epoch: int
    masters: tuple[Master, ...]
    digest: str


def roster_of(admission: AdmissionState) -> Roster:
    masters = tuple(sorted(Master(node, cert.cluster) for node, cert in admission.certificates.items()
                           if cert.role in MASTER_ROLES))
    epoch = len(masters) + 2 * len(admission.revocations)
    digest = blake3.blake3(pack([epoch, [[m.node_id, m.cluster] for m in masters]])).hexdigest()[:32]
    return Roster(epoch, masters, digest)


def _wire_size(msg: Message) -> int:
    if isinstance(msg, Accept):
        return len(msg.entry.manifest) + 256
    if isinstance(msg, Promise) and msg.top is not None:
        return len(msg.top.manifest) + 256
    if isinstance(msg, CommitReply):
        return len(msg.manifest) + 256
    return 256


@dataclass
class _Link:
    """Messages waiting for one master, and the task that streams them to it."""

    buffer: deque[Message] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class IssuerService:
    """Version issuance for one eltond. ``await start()``, then ``issue`` is the Repository hook."""

    def __init__(self, identity: Identity, gossip: GossipService, meta: MetaStore,
                 config: IssuanceSettings | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.identity = identity
        self.id = identity.node_id
        self.gossip = gossip
        self.config = config or IssuanceSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.is_master = gossip.role in MASTER_ROLES
        self.store = IssuanceStore(meta)
        self.issuer = Issuer(identity, self.config.issuer_config(), self.rng)
        self.counters: dict[str, int] = {}
        self.roster: Roster | None = None
        self.broken: BaseException | None = None
        self._members: dict[str, MemberInfo] = {}
        self._live: set[str] = set()
        self._admission_size: tuple[int, int] = (-1, -1)
        self._waiters: dict[str, asyncio.Future[Manifest]] = {}
        self._barrier: asyncio.Task[None] | None = None
        self._deferred: deque[tuple[asyncio.Task[None], Effect]] = deque()
        self._sessions: set[asyncio.StreamWriter] = set()
        self._links: dict[str, _Link] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._arm_pending = False
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables, load the records (masters), register the handlers, start polling."""
        await self.store.create()
        if self.is_master:
            self.issuer = Issuer(self.identity, self.config.issuer_config(), self.rng, self.store.load())
            self.gossip.register_stream_handler(FRAME_KIND, self._on_frame)
            self.gossip.register_stream_handler(STREAM_KIND, self._on_stream)
            self.gossip.register_stream_handler(COMMIT_KIND, self._on_commit_request)
        self.refresh()
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        """Stop: pending issues fail with Unavailable; records already durable stay so."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for writer in list(self._sessions):  # incoming streams end (their handler sees the close)
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._barrier is not None:  # let the last writes land (bounded: a stuck disk must not hang a stop)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._barrier), 5.0)
        self._fail_waiters(Unavailable("this master is shutting down"))

    # -- membership -----------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                self.refresh()
            except Exception:  # a bug of ours must not stop issuance
                log.exception("membership refresh failed")
                self._count("internal_error")

    def refresh(self) -> None:
        """Re-read roster, liveness and addresses from the gossip layer and feed the core."""
        now = self.clock()
        admission = self.gossip.admission
        if admission is not None and self.gossip.joined:
            size = (len(admission.certificates), len(admission.revocations))
            if size != self._admission_size:
                self._admission_size = size
                roster = roster_of(admission)
                if self.roster is None or roster.epoch > self.roster.epoch:
                    self.roster = roster
                    self.issuer.set_roster(roster.epoch, roster.masters, now)
                    log.info("issuance roster epoch %d: %d masters", roster.epoch, len(roster.masters))
        members = self.gossip.members()
        self._members = {m.id: m for m in members}
        live = {m.id for m in members if m.state in LIVE_STATES and m.role in MASTER_ROLES}
        if self.is_master:
            live.add(self.id)
        if live != self._live:
            self._live = live
            self.issuer.set_live(live, now)
        self._pump()

    # -- the pump -------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._closed or self.broken is not None:
            return
        ready: list[Effect] = []
        for effect in self.issuer.drain():
            if isinstance(effect, Persist):
                self._carry_out(ready)
                ready = []
                self._persist(effect.records)
            elif self._barrier is not None and not (isinstance(effect, Send) and isinstance(effect.message, Accept)):
                self._deferred.append((self._barrier, effect))
            else:
                ready.append(effect)
        self._carry_out(ready)
        self._arm()

    def _persist(self, records: tuple[Any, ...]) -> None:
        task = asyncio.get_running_loop().create_task(self._write(records, self._barrier))
        self._barrier = task
        task.add_done_callback(self._on_durable)

    async def _write(self, records: tuple[Any, ...], previous: asyncio.Task[None] | None) -> None:
        await self.store.save(records)  # group-committed with whatever else is queued
        if previous is not None:
            await previous  # durable in order: this one counts only once all earlier ones are

    def _on_durable(self, task: asyncio.Task[None]) -> None:
        if self._closed:
            return
        if task.cancelled() or task.exception() is not None:
            exc = Unavailable("the issuance store could not be written") if task.cancelled() else task.exception()
            if self.broken is None:
                log.error("issuance store write failed, issuance stops on this master: %r", exc)
                self.broken = exc
                self._deferred.clear()
                self._fail_waiters(Unavailable(f"issuance store failed on this master: {exc}"))
            return
        if self._barrier is task:
            self._barrier = None
        ready = []
        while self._deferred and self._deferred[0][0].done():
            ready.append(self._deferred.popleft()[1])
        self._carry_out(ready)

    def _carry_out(self, effects: Iterable[Effect]) -> None:
        batches: dict[str, list[Message]] = {}
        for effect in effects:
            if isinstance(effect, Send):
                batches.setdefault(effect.dest, []).append(effect.message)
            elif isinstance(effect, Done):
                self._done(effect)
        for dest, messages in batches.items():
            self._send(dest, messages)

    def _done(self, done: Done) -> None:
        fut = self._waiters.pop(done.request_id, None)
        if fut is None or fut.done():
            return
        if done.manifest is not None:
            fut.set_result(done.manifest)
        else:
            fut.set_exception(done.error or Unavailable("commit failed"))

    def _arm(self) -> None:
        """Re-arm the timer once per turn of the loop, however many pumps ran in it: the core's
        next deadline is a scan of every request and lead, and under load one turn runs dozens of
        pumps. A deadline met a turn late is met well within the core's retry interval."""
        if not self._arm_pending:
            self._arm_pending = True
            asyncio.get_running_loop().call_soon(self._rearm)

    def _rearm(self) -> None:
        self._arm_pending = False
        deadline = None if self._closed else self.issuer.next_deadline()
        if deadline == self._timer_at and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed or self.broken is not None:
            return
        try:
            self.issuer.handle_timer(self.clock())
        except Exception:
            log.exception("issuance timer failed")
            self._count("internal_error")
        self._pump()

    # -- sending --------------------------------------------------------------------------------

    def _send(self, dest: str, messages: list[Message]) -> None:
        link = self._links.get(dest)
        if link is None:
            link = self._links[dest] = _Link()
        room = self.config.max_buffered - len(link.buffer)
        if room < len(messages):
            self._count("send_overflow", len(messages) - max(room, 0))
            messages = messages[:max(room, 0)]
        link.buffer.extend(messages)
        if self._closed:
            return
        if link.task is None or link.task.done():
            link.task = asyncio.ensure_future(self._link_loop(dest, link))
            self._tasks.add(link.task)
            link.task.add_done_callback(self._tasks.discard)
        else:
            link.wake.set()

    async def _link_loop(self, dest: str, link: _Link) -> None:
        """Send ``dest``'s buffered messages over one TCP stream, a frame per batch; end when idle.

        Messages produced while a frame is being written wait in the buffer and leave together in
        the next frame. A frame that cannot be written is dropped and counted (the core resends)."""
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        mac: stream_auth.FrameMac | None = None  # the stream's frames after the first (stream_auth)
        offered: tuple[bytes, bytes] | None = None
        try:
            while not self._closed:
                if not link.buffer:
                    link.wake.clear()
                    try:
                        await asyncio.wait_for(link.wake.wait(), STREAM_IDLE)
                    except TimeoutError:
                        if not link.buffer:
                            return
                    continue
                if len(link.buffer) < MAX_FRAME_MESSAGES:
                    await asyncio.sleep(0)  # one more turn of the loop: commits ready now join this frame
                member = self._members.get(dest)
                if member is None or self.roster is None:
                    self._count("no_address", len(link.buffer))
                    link.buffer.clear()
                    continue
                if writer is None or writer.is_closing() or (reader is not None and reader.at_eof()):
                    if writer is not None:
                        writer.close()
                        reader = writer = None
                    mac, offered = None, self._stream_offer(dest)
                    try:
                        reader, writer = await asyncio.wait_for(self._open_stream(member.gossip), self.config.send_timeout)
                    except (OSError, TimeoutError) as exc:
                        self._count("send_failed", len(link.buffer))  # the core resends on its retry timer
                        link.buffer.clear()
                        log.debug("issuance stream to %s failed: %s", member.id[:12], exc)
                        await asyncio.sleep(self.config.retry_interval)
                        continue
                frame: list[Any] = []
                size = 0
                while link.buffer and len(frame) < MAX_FRAME_MESSAGES and size < MAX_FRAME_BYTES:
                    msg = link.buffer.popleft()
                    frame.append(message_to_wire(msg))
                    size += _wire_size(msg)
                body: dict[str, Any] = {"e": self.roster.epoch, "d": self.roster.digest, "ms": frame}
                if mac is not None:
                    data = mac.seal(body)
                else:  # the stream's first frame: a signed envelope, with the key offer if any
                    if offered is not None:
                        body["k"] = offered[0]
                    data = self.gossip.seal(STREAM_KIND, body)
                    mac = stream_auth.FrameMac(offered[1]) if offered is not None else None
                    self._count("frames_signed")
                try:
                    self._write_frame(writer, member.gossip, data)
                    if writer.transport.get_write_buffer_size():  # else nothing to wait for
                        await asyncio.wait_for(writer.drain(), self.config.send_timeout)
                    self._count("frames_sent")
                except (OSError, TimeoutError) as exc:
                    self._count("send_failed")
                    log.debug("issuance frame to %s failed: %s", member.id[:12], exc)
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    def _stream_offer(self, dest: str) -> tuple[bytes, bytes] | None:
        """The key offer for a new stream to ``dest`` (see stream_auth), or None to sign every frame
        (no certificate of it here, which the receiver would refuse anyway)."""
        admission = self.gossip.admission
        cert = admission.certificates.get(dest) if admission is not None else None
        if cert is None:
            return None
        try:
            return stream_auth.offer(self.identity, cert.public_key)
        except ProtocolError:
            return None

    async def _open_stream(self, addr: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP stream to a master's gossip port (tests wrap this to cut links)."""
        return await asyncio.open_connection(*addr)

    def _write_frame(self, writer: asyncio.StreamWriter, addr: tuple[str, int], data: bytes) -> None:
        """Write one sealed frame (tests wrap this to cut links)."""
        write_frame(writer, data)

    # -- receiving ------------------------------------------------------------------------------

    async def _on_frame(self, request: StreamRequest) -> Any:
        """One frame, one reply (the older one-shot exchange; still served)."""
        return self._take_frame(request.sender, request.body)

    async def _on_stream(self, request: StreamRequest) -> None:
        """A stream of frames from one master: the first came with the request, more follow on the
        same connection, each with the stream's MAC and a higher seq (or, when the first frame
        offered no key, each a signed envelope of the same sender with a higher seq). No replies."""
        offer = request.body.get("k") if isinstance(request.body, dict) else None
        mac = stream_auth.FrameMac(stream_auth.answer(self.identity, request.public_key, offer)) if offer is not None else None
        self._take_frame(request.sender, request.body)
        if self._closed or len(self._sessions) >= MAX_SESSIONS:
            self._count("stream_refused")  # the sender sees the close and opens a new stream next time
            return None
        self._sessions.add(request.writer)
        seq = request.seq
        try:
            while not self._closed:
                try:
                    data = await asyncio.wait_for(read_frame(request.reader), STREAM_RECV_IDLE)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return None
                # a bad frame ends the stream (gossip counts the drop by its reason)
                if mac is not None:
                    body = mac.open(data, MAX_STREAM_MESSAGE)
                else:
                    env = open_envelope(data, MAX_STREAM_MESSAGE)
                    if env.kind != STREAM_KIND or env.sender_public_key != request.public_key or env.seq <= seq:
                        raise ProtocolError("bad_stream", "frame of another kind, sender or an old seq")
                    seq, body = env.seq, env.body
                admission = self.gossip.admission
                status = "unadmitted" if admission is None else admission.status(request.sender)
                if status != "admitted":
                    raise ProtocolError(status)
                self._take_frame(request.sender, body)
            return None
        finally:
            self._sessions.discard(request.writer)

    def _take_frame(self, sender: str, body: Any) -> Any:
        roster = self.roster
        if self._closed or self.broken is not None:
            self._count("dropped_stopped")
            return {"ok": False}
        if not isinstance(body, dict) or not isinstance(body.get("ms"), list):
            self._count("malformed")
            return {"ok": False}
        if roster is None or body.get("e") != roster.epoch or body.get("d") != roster.digest:
            self._count("roster_mismatch")
            return {"ok": False, "epoch": roster.epoch if roster else -1}
        if all(m.node_id != sender for m in roster.masters):
            self._count("not_master")
            return {"ok": False}
        now = self.clock()
        for wire in body["ms"][:MAX_FRAME_MESSAGES]:
            try:
                msg = message_from_wire(wire)
                self.issuer.receive(sender, msg, now)
                self._count("received")
            except ProtocolError as exc:
                self._count(f"malformed:{exc.reason}")
        self._pump()
        return {"ok": True}

    # -- commits --------------------------------------------------------------------------------

    async def issue(self, draft: Draft, expected_parent: int | None = None) -> Manifest:
        """Issue the next version of ``draft.key`` at its home (the Repository's ``issuer`` hook).

        Raises Conflict (expected parent overtaken), ReplicasUnreachable (within commit_timeout,
        naming the home and what did not answer) or Unavailable (not in a mesh, stopped)."""
        validate_key(draft.key)
        if expected_parent is not None and (not isinstance(expected_parent, int) or expected_parent < 0):
            raise InvalidRequest(f"expected parent must be a version number, not {expected_parent!r}")
        if self._closed or self.broken is not None:
            raise Unavailable("issuance is stopped on this host")
        if not self.is_master:
            return await self._forward(draft, expected_parent)
        if self.roster is None:
            raise Unavailable("this master has not joined a mesh yet: no roster of masters")
        rid = f"{self.id[:8]}-{self.rng.getrandbits(64):016x}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Manifest] = loop.create_future()
        self._waiters[rid] = fut
        self.issuer.submit(rid, draft, expected_parent, self.clock())
        self._pump()
        # The core answers every request by its deadline; this timer only guards against a bug
        # there (a plain timer: wait_for and shield cost more than the rest of this method).
        guard = loop.call_later(self.config.commit_timeout + 5.0, _fail_if_pending, fut, draft.key,
                                self.config.commit_timeout)
        try:
            return await fut
        finally:
            guard.cancel()
            self._waiters.pop(rid, None)

    async def _on_commit_request(self, request: StreamRequest) -> Any:
        """A node of the mesh commits through this master."""
        body = request.body
        if not isinstance(body, dict):
            raise InvalidRequest("a commit carries a draft")
        try:
            draft = draft_from_wire(body.get("draft"))
        except ProtocolError as exc:
            self._count("malformed_commit")
            raise InvalidRequest(exc.message) from exc
        parent = body.get("parent")
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool) or parent < 0):
            raise InvalidRequest("expected parent must be a version number")
        manifest = await self.issue(draft, parent)
        return {"manifest": manifest.encode()}

    def _forward_targets(self) -> list[MemberInfo]:
        masters = [m for m in self._members.values()
                   if m.role in MASTER_ROLES and m.state in LIVE_STATES and m.id != self.id]
        own = [m for m in masters if m.cluster == self.gossip.cluster]
        other = [m for m in masters if m.cluster != self.gossip.cluster]
        self.rng.shuffle(own)
        other.sort(key=lambda m: (m.state != MemberState.ALIVE, m.rtt_estimate if m.rtt_estimate is not None else 1e9))
        return own + other

    async def _forward(self, draft: Draft, expected_parent: int | None) -> Manifest:
        targets = self._forward_targets()
        if not targets:
            raise ReplicasUnreachable(f"key {draft.key!r}: no master is reachable from this node")
        errors = []
        for member in targets[:3]:
            try:
                _, body = await self.gossip.request(member.gossip, COMMIT_KIND,
                                                    {"draft": draft_to_wire(draft), "parent": expected_parent},
                                                    timeout=self.config.commit_timeout + 5.0)
            except (OSError, ConnectionError) as exc:  # never reached it: safe to try another master
                errors.append(f"{member.id[:12]}: {exc}")
                continue
            except (TimeoutError, asyncio.IncompleteReadError) as exc:  # it may have issued: do not retry
                raise ReplicasUnreachable(f"key {draft.key!r}: master {member.id[:12]} did not answer "
                                          f"within {self.config.commit_timeout + 5.0:g} s") from exc
            except ProtocolError as exc:
                raise Unavailable(f"master {member.id[:12]} sent a bad reply: {exc.message}") from exc
            if not isinstance(body, dict) or not isinstance(body.get("manifest"), bytes):
                raise Unavailable(f"master {member.id[:12]} sent a bad commit reply")
            manifest = Manifest.decode(body["manifest"]).verify()
            if manifest.key != draft.key or manifest.content_hash != draft.content_hash:
                raise Unavailable(f"master {member.id[:12]} answered with a manifest of other content")
            self.issuer.learn(manifest)
            return manifest
        raise ReplicasUnreachable(f"key {draft.key!r}: no master answered: {'; '.join(errors)}")

    # -- views ----------------------------------------------------------------------------------

    def learn(self, manifest: Manifest) -> None:
        """Cache a manifest seen elsewhere (verified first)."""
        self.issuer.learn(manifest)

    def cached(self, key: str, version: int) -> Manifest | None:
        return self.issuer.cached(key, version)

    def reachable(self, key: str) -> bool:
        """Whether a majority of the key's replica set is alive in this host's view."""
        replicas = self.issuer.replica_set(key)
        return bool(replicas) and sum(n in self._live for n in replicas) * 2 > len(replicas)

    def where(self, key: str) -> dict[str, Any]:
        """For ``elton where KEY``: home, replicas (with cluster and liveness), latest known version."""
        validate_key(key)
        clusters = {m.node_id: m.cluster for m in self.roster.masters} if self.roster else {}
        replicas = self.issuer.replica_set(key)
        return {
            "key": key,
            "epoch": self.roster.epoch if self.roster else None,
            "home": self.issuer.home_of(key),
            "replicas": [{"node_id": n, "cluster": clusters.get(n), "live": n in self._live} for n in replicas],
            "reachable": self.reachable(key),
            "latest_known": self.issuer.last_known(key),  # chosen versions this host has seen
            "top_accepted_here": self.store.top_version(key) if self.is_master else 0,
        }

    def info(self) -> dict[str, Any]:
        return {"role": "master" if self.is_master else "node",
                "epoch": self.roster.epoch if self.roster else None,
                "masters": len(self.roster.masters) if self.roster else 0, "live_masters": len(self._live),
                "requests_in_flight": self.issuer.requests_in_flight(), "sends_in_flight": sum(len(lk.buffer) for lk in self._links.values()),
                "handoffs_pending": self.issuer.handoffs_pending(), "broken": repr(self.broken) if self.broken else None,
                "counters": dict(self.counters)}

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _fail_waiters(self, error: EltonError) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(error)
        self._waiters.clear()


# -- queued commits (elton put --queue) -----------------------------------------------------------

queue_commits: contextvars.ContextVar[bool] = contextvars.ContextVar("elton_queue_commits", default=False)
"""Set it (``queue_commits.set(True)``) around a PUT/commit whose writer asked to queue."""


class CommitQueued(Unavailable):
    """The key's replicas are unreachable; the commit is stored here and will be issued when they are back."""

    http_status = 202
    code = "commit_queued"

    def __init__(self, detail: str = "", *, message: str | None = None, pending_id: str = "") -> None:
        super().__init__(detail, message=message)
        self.pending_id = pending_id

    def to_json(self) -> dict[str, str]:
        return {**super().to_json(), "pending": self.pending_id}


class PendingCommits:
    """Drafts whose issuance failed while the writer asked to queue; retried in the background.

    ``hook()`` wraps an issue function for the Repository: when ``queue_commits`` is set and the
    issue fails with ReplicasUnreachable, the draft (its chunks are already recorded locally) is
    stored and ``CommitQueued`` raised. ``run()`` retries queued drafts, oldest first and one key
    at a time in order, whenever the key is reachable; an issued one goes to ``on_issued`` (e.g.
    ``Repository.learn``) and is deleted; one whose expected parent was overtaken is kept in
    state ``conflict`` and not retried.
    """

    def __init__(self, store: PendingStore, issue: IssueFn, on_issued: Callable[[Manifest], Awaitable[None]],
                 reachable: Callable[[str], bool] = lambda key: True, retry_interval: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.issue = issue
        self.on_issued = on_issued
        self.reachable = reachable
        self.retry_interval = retry_interval
        self.rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        await self.store.create()
        self._task = asyncio.create_task(self.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def hook(self) -> IssueFn:
        async def issue(draft: Draft, expected_parent: int | None = None) -> Manifest:
            try:
                return await self.issue(draft, expected_parent)
            except ReplicasUnreachable as exc:
                if not queue_commits.get():
                    raise
                item = await self.add(draft, expected_parent, exc.message)
                raise CommitQueued(f"{draft.key!r} is pending as {item.id}: {exc.message}",
                                   pending_id=item.id) from exc

        return issue

    async def add(self, draft: Draft, expected_parent: int | None, error: str) -> PendingCommit:
        pid = f"p{int(time.time() * 1000):013d}-{self.rng.getrandbits(32):08x}"
        item = await self.store.add(pid, draft, expected_parent, error)
        self._wake.set()
        return item

    def list(self, limit: int = 1000) -> list[dict[str, Any]]:
        """For ``GET /v1/pending`` and ``elton pending``: oldest first."""
        return [p.to_json() for p in self.store.list(limit)]

    async def run(self) -> None:
        while True:
            try:
                await self.retry_once()
            except Exception:
                log.exception("retrying pending commits failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_interval)

    async def retry_once(self) -> int:
        """One pass over the queued drafts; returns how many were issued."""
        issued = 0
        blocked: set[str] = set()
        for item in self.store.list(state="queued"):
            if item.key in blocked or not self.reachable(item.key):
                blocked.add(item.key)
                continue
            try:
                manifest = await self.issue(item.draft, item.expected_parent)
            except Conflict as exc:
                await self.store.update(item.id, "conflict", exc.message)
                blocked.add(item.key)
                continue
            except EltonError as exc:
                await self.store.update(item.id, "queued", exc.message)
                blocked.add(item.key)
                continue
            await self.on_issued(manifest)
            await self.store.remove([item.id])
            issued += 1
        return issued
