"""The gossip runtime: drives the membership core over UDP (asyncio-dgram) and TCP on one host:port.

UDP carries SWIM datagrams; TCP on the same port carries framed request/reply exchanges whose
kind picks a handler: ``push_pull`` and ``join`` here, more (chunk transfers) registered by other
services with ``register_stream_handler``. Every message is a signed envelope. Before a datagram
reaches the core it passes, in order: a per-source token bucket, the envelope checks (size,
msgpack, version, signature), admission (a certificate, no revocation) and a replay window
over the sender's sequence numbers. Whatever fails is dropped and counted in ``drops[reason]``.

Persisted in ``data_dir/mesh/`` (atomic writes): ``node.json`` (incarnation, known peers),
``admission.msgpack`` (certificates and revocations), ``admin.key`` if this host created the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncio_dgram

from mesh.core.admission import (
    MAX_CLUSTER_NAME,
    MAX_ROLE_NAME,
    AdmissionState,
    Certificate,
    check_name,
    check_token,
    issue_certificate,
    issue_revocation,
    make_token,
    parse_token,
    verify_certificate,
)
from mesh.core.codec import MAX_STREAM_MESSAGE, Envelope, open_envelope, pack, seal, unpack
from mesh.core.identity import Identity, node_id_of
from mesh.core.membership import Config, Datagram, MemberEvent, MemberInfo, Membership, PushPull
from mesh.core.membership.core import SendDatagram, StartPushPull
from mesh.core.membership.messages import Addr, CertUpdate, RevokeUpdate
from mesh.errors import (
    ConfigError,
    Conflict,
    EltonError,
    InvalidRequest,
    ProtocolError,
    Unauthorized,
    Unavailable,
    from_json,
)
from mesh.runtime.datadir import write_atomic

log = logging.getLogger("elton.gossip")

MESH_DIR = "mesh"
NODE_FILE = "node.json"
ADMISSION_FILE = "admission.msgpack"
ADMIN_KEY_FILE = "admin.key"
FRAME_HEADER = struct.Struct(">I")
SEQ_COUNTER_BITS = 32  # seq = boot incarnation << 32 | per-boot counter: strictly increasing across restarts
REPLAY_WINDOW = 1024  # sequence numbers remembered below the highest seen, per sender
MAX_SENDERS_TRACKED = 8192  # replay windows and token buckets kept (least recently used evicted)
MAX_OUTBOX = 2048  # datagrams waiting for the socket
MAX_EVENTS = 10_000
CERT_SYNC_INTERVAL = 2.0  # at most one push-pull a member asks for because a stranger's datagrams came
MAX_PUSH_PULLS = 4  # concurrent outgoing push-pulls
MAX_STREAMS = 64  # concurrent incoming TCP exchanges
MAX_PEERS_SAVED = 64
STREAM_TIMEOUT = 10.0
DEFAULT_TOKEN_TTL = 24 * 3600.0
SAVE_PEERS_EVERY = 2.0


class ReplayWindow:
    """Accept each sequence number at most once; tolerate reordering within REPLAY_WINDOW."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.top = -1
        self.bits = 0  # bit i set: top - i was seen

    def accept(self, seq: int) -> bool:
        if seq > self.top:
            shift = seq - self.top
            self.bits = 1 if shift >= self.size else ((self.bits << shift) | 1) & ((1 << self.size) - 1)
            self.top = seq
            return True
        offset = self.top - seq
        if offset >= self.size or (self.bits >> offset) & 1:
            return False
        self.bits |= 1 << offset
        return True


class TokenBucket:
    """``rate`` messages per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Lru(OrderedDict):
    """A dict that forgets its least recently used entries beyond ``limit``."""

    def __init__(self, limit: int, make: Callable[[], Any]) -> None:
        super().__init__()
        self.limit, self.make = limit, make

    def get_or_make(self, key: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = self.make()
        if len(self) > self.limit:
            self.popitem(last=False)
        return value


@dataclass(frozen=True)
class StreamRequest:
    """One TCP request as a handler sees it. ``reader``/``writer`` stay open for streaming replies."""

    kind: str
    sender: str
    public_key: bytes
    seq: int
    body: Any
    peer: Addr
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


StreamHandler = Callable[[StreamRequest], Awaitable[Any]]


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_STREAM_MESSAGE) -> bytes:
    (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    if size > limit:
        raise ProtocolError("oversized", f"frame of {size} bytes")
    return await reader.readexactly(size)


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(FRAME_HEADER.pack(len(data)) + data)


def parse_addr(addr: Addr | str) -> Addr:
    """("host", port) or "host:port" (IPv6 as "[::1]:7946")."""
    if isinstance(addr, tuple):
        return (str(addr[0]), int(addr[1]))
    host, sep, port = str(addr).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"not a HOST:PORT address: {addr!r}")
    return (host.strip("[]"), int(port))


class GossipService:
    """Membership over the network, embeddable in the daemon. See the module docstring."""

    def __init__(self, identity: Identity, config: Config, bind: Addr, cluster: str, role: str, http_addr: str,
                 admission_state: AdmissionState | None = None, data_dir: Path | None = None, *,
                 advertise: Addr | None = None, rate: float = 500.0, burst: float = 1000.0,
                 rng: random.Random | None = None) -> None:
        try:
            check_name(cluster, MAX_CLUSTER_NAME, "cluster")
            check_name(role, MAX_ROLE_NAME, "role")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.identity = identity
        self.id = identity.node_id
        self.config = config
        self.bind = bind
        self.advertise = advertise
        self.cluster, self.role, self.http_addr = cluster, role, http_addr
        self.admission = admission_state
        self.dir = None if data_dir is None else Path(data_dir) / MESH_DIR
        self.rate, self.burst = rate, burst
        self.rng = rng or random.Random()
        self.drops: dict[str, int] = {}
        self.core: Membership | None = None
        self.admin: Identity | None = None
        self.address: Addr | None = None  # where we listen, once started
        self._handlers: dict[str, tuple[StreamHandler, bool]] = {}
        self._replay: _Lru = _Lru(MAX_SENDERS_TRACKED, ReplayWindow)
        self._buckets: _Lru = _Lru(MAX_SENDERS_TRACKED, lambda: TokenBucket(self.rate, self.burst, self._now()))
        self._events: deque[MemberEvent] = deque(maxlen=MAX_EVENTS)
        self._outbox: asyncio.Queue[tuple[bytes, Addr]] = asyncio.Queue(MAX_OUTBOX)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._streams = asyncio.Semaphore(MAX_STREAMS)
        self._push_pulls = asyncio.Semaphore(MAX_PUSH_PULLS)
        self._udp: asyncio_dgram.aio.DatagramServer | None = None
        self._tcp: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._boot_incarnation = 0
        self._saved_incarnation = -1
        self._counter = 0
        self._peers: list[Addr] = []
        self._peers_saved_at = 0.0
        self._admission_size = (0, 0)
        self._cert_sync_at = float("-inf")
        self._closed = False
        self.register_stream_handler("push_pull", self._serve_push_pull, admitted_only=False)
        self.register_stream_handler("join", self._serve_join, admitted_only=False)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self, new_mesh: bool = True) -> None:
        """Listen, and take up the saved membership. Without one, create a new mesh if ``new_mesh``
        (this host then holds the admin key), else wait for ``join``."""
        saved = self._load()
        incarnation = int(saved.get("incarnation", 0)) + 1
        self._boot_incarnation = incarnation
        self._peers = [(str(h), int(p)) for h, p in saved.get("peers", [])][:MAX_PEERS_SAVED]
        if self.admission is None and new_mesh:
            self._create_mesh()
        await self._listen()
        self._save_node(incarnation)
        if self.admission is not None and self.admission.status(self.id) == "admitted":
            self._make_core(incarnation)
            if self._peers:
                self._spawn(self._rejoin(list(self._peers)))
        self._spawn(self._send_loop())
        self._spawn(self._recv_loop())

    async def close(self) -> None:
        """Stop at once, without telling anyone (to others it looks like a crash)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._save_peers(force=True)
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)

    async def leave(self, linger: float = 0.5) -> None:
        """Tell a few members we leave on purpose, give the datagrams time to go, then close."""
        if self.core is not None and not self._closed:
            self.core.leave(self._now())
            self._pump()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), linger)
        await self.close()

    # -- view -----------------------------------------------------------------------------------

    def members(self) -> list[MemberInfo]:
        return [] if self.core is None else self.core.members()

    def rtt(self, a: str, b: str) -> float | None:
        """Estimated round-trip time between two members, seconds (``Membership.rtt``): from this host,
        the smoothed RTT of its own probes when it has one, else the Vivaldi distance; None if unknown."""
        return None if self.core is None else self.core.rtt(a, b)

    def drain_events(self) -> list[MemberEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    @property
    def ignored(self) -> dict[str, int]:
        """Updates inside accepted messages that the core did not apply, by reason."""
        return {} if self.core is None else dict(self.core.ignored)

    @property
    def joined(self) -> bool:
        return self.core is not None

    @property
    def mesh_id(self) -> str | None:
        return None if self.admission is None else self.admission.mesh_id

    @property
    def incarnation(self) -> int:
        return 0 if self.core is None else self.core.incarnation

    # -- admin ------------------------------------------------------------------------------------

    def make_token(self, ttl: float = DEFAULT_TOKEN_TTL) -> str:
        """A join token for this mesh (only on the host that holds the admin key)."""
        return make_token(self._require_admin(), os.urandom(8), time.time() + ttl)

    def revoke(self, node: str) -> str:
        """Remove a host from the mesh for good (full id or a unique prefix of 8+ digits); return its id.

        The revocation spreads by gossip; from then on its messages are dropped everywhere."""
        admin = self._require_admin()
        node_id = self._resolve(node)
        if node_id == self.id:
            raise InvalidRequest("the admin host cannot revoke itself")
        assert self.core is not None
        try:
            self.core.admit(RevokeUpdate(issue_revocation(admin, node_id, time.time())), self._now())
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        self._pump()
        return node_id

    def _resolve(self, node: str) -> str:
        known = set(self.admission.certificates) if self.admission is not None else set()
        known |= {m.id for m in self.members()}
        if node in known or (len(node) == 40 and all(c in "0123456789abcdef" for c in node)):
            return node
        matches = sorted(k for k in known if len(node) >= 8 and k.startswith(node.lower()))
        if len(matches) != 1:
            raise InvalidRequest(f"{node!r} names {'no' if not matches else 'more than one'} member of the mesh")
        return matches[0]

    def info(self) -> dict[str, Any]:
        """A summary for status pages: who we are, the mesh, the members, the drop counters."""
        members = self.members()
        return {"node_id": self.id, "mesh_id": self.mesh_id, "joined": self.joined, "admin": self.admin is not None,
                "gossip": list(self.address) if self.address else None, "incarnation": self.incarnation,
                "members": {s: sum(1 for m in members if m.state.value == s)
                            for s in ("alive", "suspect", "dead", "left")},
                "drops": dict(self.drops), "ignored": self.ignored}

    def _require_admin(self) -> Identity:
        if self.admin is None or self.core is None:
            raise Unauthorized("this host does not hold the mesh admin key")
        return self.admin

    # -- join -------------------------------------------------------------------------------------

    async def join(self, seeds: Iterable[Addr | str], token: str | None = None) -> int:
        """Join through ``seeds`` (with a token the first time); return how many seeds answered."""
        seeds = [parse_addr(seed) for seed in seeds]
        if not seeds:
            raise InvalidRequest("no seed address to join")
        if token is not None:
            await self._join_with_token(seeds, token)
        if self.core is None:
            raise Unauthorized("not a member of a mesh yet: join with a token")
        answered = 0
        for seed in seeds:
            try:
                await self._push_pull(seed)
                answered += 1
            except (OSError, EltonError, asyncio.IncompleteReadError, TimeoutError) as exc:
                log.info("push-pull with %s failed: %s", seed, exc)
        if answered == 0:
            raise Unavailable(f"no seed answered: {', '.join(f'{h}:{p}' for h, p in seeds)}")
        return answered

    async def _join_with_token(self, seeds: list[Addr], token: str) -> None:
        wanted = parse_token(token)
        if self.admission is not None and self.admission.mesh_id == wanted.mesh_id and self.core is not None:
            return  # already a member of this mesh: a restart with the same --join/--token
        if self.admission is not None and not self._solo_mesh():
            raise Conflict(f"already a member of mesh {self.admission.mesh_id[:12]}")
        body = {"token": token, "cluster": self.cluster, "role": self.role}
        errors = []
        for seed in seeds:
            try:
                responder, reply = await self.request(seed, "join", body)
                break
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ProtocolError, Unavailable) as exc:
                errors.append(f"{seed[0]}:{seed[1]}: {exc}")
        else:
            raise Unavailable("; ".join(errors))
        if not isinstance(reply, dict) or not isinstance(reply.get("admin"), bytes):
            raise ProtocolError("bad_message", "join reply")
        admin_public_key = reply["admin"]
        if node_id_of(admin_public_key) != wanted.mesh_id:
            raise ProtocolError("bad_certificate", "join reply signed for another mesh")
        cert = Certificate.from_wire(reply.get("certificate"))
        verify_certificate(cert, admin_public_key)
        if cert.public_key != self.identity.public_key:
            raise ProtocolError("bad_certificate", "certificate for another key")
        if self.admin is not None:  # drop the solo mesh we made at start
            self.admin = None
            if self.dir is not None:
                (self.dir / ADMIN_KEY_FILE).unlink(missing_ok=True)
        self.admission = AdmissionState(admin_public_key)
        self.admission.add_certificate(cert)
        self._make_core(max(self._boot_incarnation, self.incarnation))
        assert self.core is not None
        self.core.merge_state(responder, PushPull.from_wire(reply.get("state")), self._now())
        self._pump()
        self._save_admission(force=True)

    def _solo_mesh(self) -> bool:
        return self.admin is not None and all(m.id == self.id for m in self.members())

    # -- TCP streams ------------------------------------------------------------------------------

    def register_stream_handler(self, kind: str, handler: StreamHandler, admitted_only: bool = True) -> None:
        """Serve TCP requests of ``kind``. The handler's return value (unless None) is the reply body."""
        if kind in self._handlers and kind not in ("push_pull", "join"):
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._handlers[kind] = (handler, admitted_only)

    async def request(self, addr: Addr, kind: str, body: Any, timeout: float = STREAM_TIMEOUT) -> tuple[str, Any]:
        """One TCP exchange: send a signed request, return (responder id, reply body)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), timeout)
        try:
            write_frame(writer, seal(self.identity, kind, self._next_seq(), body))
            await writer.drain()
            env = open_envelope(await asyncio.wait_for(read_frame(reader), timeout), MAX_STREAM_MESSAGE)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if env.kind == "error" and isinstance(env.body, dict):
            raise from_json({str(k): str(v) for k, v in env.body.items()}, 0)
        if env.kind != f"{kind}.reply":
            raise ProtocolError("bad_message", f"reply of kind {env.kind[:20]!r}")
        return env.sender, env.body

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            if self._streams.locked():
                self._drop("too_many_streams")
                return
            async with self._streams:
                await self._serve_stream(reader, writer, (str(peer[0]), int(peer[1])))
        except ProtocolError as exc:
            self._drop(exc.reason)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            self._drop("truncated")
        except Exception:  # a bug of ours: log it, keep serving
            log.exception("stream handler failed")
            self._drop("internal_error")
        finally:
            writer.close()

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Addr) -> None:
        env = open_envelope(await asyncio.wait_for(read_frame(reader), STREAM_TIMEOUT), MAX_STREAM_MESSAGE)
        entry = self._handlers.get(env.kind)
        if entry is None:
            raise ProtocolError("unknown_kind", env.kind[:20])
        handler, admitted_only = entry
        if admitted_only:
            self._check_sender(env)
        request = StreamRequest(env.kind, env.sender, env.sender_public_key, env.seq, env.body, peer, reader, writer)
        try:
            reply = await handler(request)
        except ProtocolError:
            raise
        except EltonError as exc:
            write_frame(writer, seal(self.identity, "error", self._next_seq(), exc.to_json()))
            await writer.drain()
            return
        if reply is not None:
            write_frame(writer, seal(self.identity, f"{env.kind}.reply", self._next_seq(), reply))
            await writer.drain()

    async def _serve_push_pull(self, request: StreamRequest) -> Any:
        core = self._require_core()
        state = PushPull.from_wire(request.body)
        self._admit_from_state(request, state)
        reply = core.local_state().to_wire()
        core.merge_state(request.sender, state, self._now())
        self._pump()
        return reply

    def _admit_from_state(self, request: StreamRequest, state: PushPull) -> None:
        """A member that just joined is not known here yet: its own certificate rides along."""
        assert self.admission is not None and self.core is not None
        status = self.admission.status(request.sender)
        if status == "unadmitted":
            own = [c for c in state.certificates if c.public_key == request.public_key]
            if own:
                self.core.admit(CertUpdate(own[0]), self._now())
                status = self.admission.status(request.sender)
        if status != "admitted":
            raise ProtocolError(status)
        if not self._replay.get_or_make(request.sender).accept(request.seq):
            raise ProtocolError("replayed")

    async def _serve_join(self, request: StreamRequest) -> Any:
        if self.admin is None or self.core is None:  # the joiner tries its next seed
            raise Unavailable("this host cannot admit: join through the host that created the mesh")
        admin = self.admin
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise InvalidRequest("a join request carries a token")
        check_token(admin, body["token"], time.time())
        try:
            cert = issue_certificate(admin, request.public_key, body.get("cluster"), body.get("role"), time.time())
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(str(exc)) from exc
        if self.admission is not None and self.admission.status(request.sender) == "revoked":
            raise Unauthorized("this host was removed from the mesh")
        core = self._require_core()
        core.admit(CertUpdate(cert), self._now())
        self._pump()
        log.info("admitted %s (%s, %s)", request.sender[:12], cert.cluster, cert.role)
        return {"certificate": cert.to_wire(), "admin": admin.public_key, "state": core.local_state().to_wire()}

    def _require_core(self) -> Membership:
        if self.core is None:
            raise Unavailable("this host has not joined a mesh")
        return self.core

    async def _push_pull(self, addr: Addr) -> None:
        core = self._require_core()
        sender, body = await self.request(addr, "push_pull", core.local_state().to_wire())
        if self.admission is None or self.admission.status(sender) != "admitted":
            # the seed may be new to us; its certificate is in its state
            state = PushPull.from_wire(body)
            own = [c for c in state.certificates if c.node_id == sender]
            if own and self.admission is not None and self.admission.status(sender) == "unadmitted":
                core.admit(CertUpdate(own[0]), self._now())
            if self.admission is None or self.admission.status(sender) != "admitted":
                raise ProtocolError("unadmitted", "push-pull reply")
        else:
            state = PushPull.from_wire(body)
        core.merge_state(sender, state, self._now())
        self._pump()

    async def _push_pull_task(self, addr: Addr) -> None:
        if self._push_pulls.locked():
            return
        async with self._push_pulls:
            try:
                await self._push_pull(addr)
            except ProtocolError as exc:
                self._drop(exc.reason)
            except (OSError, EltonError, asyncio.IncompleteReadError, TimeoutError) as exc:
                log.debug("push-pull with %s failed: %s", addr, exc)

    async def _rejoin(self, peers: list[Addr]) -> None:
        for peer in peers:
            if peer != self.address:
                await self._push_pull_task(peer)

    # -- UDP ----------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        host, port = self.bind
        for _ in range(20 if port == 0 else 1):
            udp = await asyncio_dgram.bind((host, port))
            actual = udp.sockname[1]
            try:
                self._tcp = await asyncio.start_server(self._on_stream, host, actual, reuse_address=True)
            except OSError:
                udp.close()
                if port != 0:
                    raise
                continue
            self._udp = udp
            self.address = (host, actual)
            return
        raise OSError(f"no free port on {host} for both UDP and TCP")

    async def _recv_loop(self) -> None:
        assert self._udp is not None
        while True:
            try:
                data, addr = await self._udp.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError:  # e.g. ICMP port unreachable from an earlier send
                continue
            try:
                self._on_datagram(data, (str(addr[0]), int(addr[1])))
            except Exception:  # a bug of ours must not stop the daemon
                log.exception("datagram handling failed")
                self._drop("internal_error")

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        now = self._now()
        if not self._buckets.get_or_make(addr).take(now):
            self._drop("rate_limited")
            return
        try:
            env = open_envelope(data, self.config.max_datagram)
            if env.kind != Datagram.KIND:
                raise ProtocolError("unknown_kind", env.kind[:20])
            if self.core is None:
                raise ProtocolError("not_joined")
            self._check_sender(env)
            msg = Datagram.from_wire(env.body)
        except ProtocolError as exc:
            self._drop(exc.reason)
            if exc.reason == "unadmitted":
                self._sync_certificates(now)
            return
        self.core.receive(env.sender, addr, msg, now)
        self._pump()

    def _sync_certificates(self, now: float) -> None:
        """A signed datagram from a host we hold no certificate of: most likely a member admitted
        while the certificate's broadcast missed us (its retransmissions are few in a small mesh),
        and until we learn it we drop everything it sends. Ask a live member, never the stranger
        (its address may be forged), for its state: the certificates come with it."""
        if self.core is None or now - self._cert_sync_at < CERT_SYNC_INTERVAL:
            return
        peers = [m.gossip for m in self.core.members() if m.id != self.id and m.state.value == "alive"]
        if peers:
            self._cert_sync_at = now
            self._spawn(self._push_pull_task(self.rng.choice(peers)))

    def check_sender(self, env: Envelope) -> None:
        """Raise ProtocolError unless ``env``'s signer is admitted and its sequence number is new (for
        handlers that read further requests on a connection they keep)."""
        self._check_sender(env)

    def _check_sender(self, env: Envelope) -> None:
        status = "unadmitted" if self.admission is None else self.admission.status(env.sender)
        if status != "admitted":
            raise ProtocolError(status)
        if not self._replay.get_or_make(env.sender).accept(env.seq):
            raise ProtocolError("replayed")

    async def _send_loop(self) -> None:
        assert self._udp is not None
        while True:
            data, addr = await self._outbox.get()
            try:
                await self._udp.send(data, addr)
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:
                log.debug("send to %s failed: %s", addr, exc)
            finally:
                self._outbox.task_done()

    # -- the pump -----------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send what the core wants sent, collect its events, persist changes, re-arm the timer."""
        core = self.core
        if core is None or self._closed:
            return
        for out in core.drain():
            if isinstance(out, SendDatagram):
                data = seal(self.identity, Datagram.KIND, self._next_seq(), out.datagram.to_wire())
                try:
                    self._outbox.put_nowait((data, out.addr))
                except asyncio.QueueFull:
                    self._drop("outbox_full")
            elif isinstance(out, StartPushPull):
                self._spawn(self._push_pull_task(out.addr))
        events = core.drain_events()
        self._events.extend(events)
        if core.incarnation != self._saved_incarnation:
            self._save_node(core.incarnation)
        self._save_admission()
        if events:
            self._save_peers()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = None if self.core is None else self.core.next_deadline()
        if deadline is not None and not self._closed:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.core is None or self._closed:
            return
        try:
            self.core.handle_timer(self._now())
        except Exception:
            log.exception("membership timer failed")
            self._drop("internal_error")
        self._pump()

    # -- helpers --------------------------------------------------------------------------------

    def _make_core(self, incarnation: int) -> None:
        host, port = self.advertise or self.address or self.bind
        self.core = Membership(node_id=self.id, cluster=self.cluster, role=self.role, gossip=(host, port),
                               http=self.http_addr, incarnation=incarnation, admission=self.admission,
                               config=self.config, rng=self.rng, now=self._now())
        if self.address is not None:
            self._pump()

    def _create_mesh(self) -> None:
        self.admin = Identity(os.urandom(32))
        self.admission = AdmissionState(self.admin.public_key)
        self.admission.add_certificate(
            issue_certificate(self.admin, self.identity.public_key, self.cluster, self.role, time.time()))
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.dir / ADMIN_KEY_FILE, self.admin.seed.hex().encode() + b"\n", mode=0o600)
        self._save_admission(force=True)
        log.info("created mesh %s", self.admission.mesh_id[:12])

    def seal(self, kind: str, body: Any) -> bytes:
        """One signed envelope from this host (for services that speak on the gossip port's TCP side)."""
        return seal(self.identity, kind, self._next_seq(), body)

    def next_seq(self) -> int:
        """A sequence number for an envelope sealed elsewhere (``seal(self.identity, kind, seq, body)``,
        in any thread: signing is thread-safe, this counter is not, so it is taken on the loop)."""
        return self._next_seq()

    def _next_seq(self) -> int:
        self._counter += 1
        return (self._boot_incarnation << SEQ_COUNTER_BITS) | (self._counter & ((1 << SEQ_COUNTER_BITS) - 1))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _spawn(self, coro: Awaitable[Any]) -> None:
        if self._closed:
            coro.close()  # type: ignore[attr-defined]
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- persistence ------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self.dir is None:
            return {}
        saved: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            saved = json.loads((self.dir / NODE_FILE).read_text())
        with contextlib.suppress(FileNotFoundError):
            self.admin = Identity(bytes.fromhex((self.dir / ADMIN_KEY_FILE).read_text().strip()))
        try:
            self.admission = AdmissionState.from_wire(unpack((self.dir / ADMISSION_FILE).read_bytes(), 1 << 26))
            self._admission_size = (len(self.admission.certificates), len(self.admission.revocations))
        except FileNotFoundError:
            pass
        except ProtocolError as exc:
            log.warning("ignoring unreadable %s: %s", ADMISSION_FILE, exc)
        if self.admin is not None and (self.admission is None or self.admission.admin_public_key
                                       != self.admin.public_key):
            self.admin = None  # a stale admin key of another mesh
        return saved if isinstance(saved, dict) else {}

    def _save_node(self, incarnation: int) -> None:
        self._saved_incarnation = incarnation
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"incarnation": incarnation, "peers": [list(p) for p in self._peers][:MAX_PEERS_SAVED]}
        write_atomic(self.dir / NODE_FILE, json.dumps(data).encode())

    def _save_admission(self, force: bool = False) -> None:
        if self.admission is None:
            return
        size = (len(self.admission.certificates), len(self.admission.revocations))
        if not force and size == self._admission_size:
            return
        self._admission_size = size
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.dir / ADMISSION_FILE, pack(self.admission.to_wire()), mode=0o600)

    def _save_peers(self, force: bool = False) -> None:
        if self.core is None:
            return
        now = time.monotonic()
        if not force and now - self._peers_saved_at < SAVE_PEERS_EVERY:
            return
        self._peers_saved_at = now
        alive = [m.gossip for m in self.core.members() if m.id != self.id and m.state.value in ("alive", "suspect")]
        if alive or force:
            self._peers = alive[:MAX_PEERS_SAVED] or self._peers
            self._save_node(self.core.incarnation)
