"""Chunk transfer between hosts, on the gossip port's TCP side.

The exchange (kind ``chunks``):

1. The requester sends one signed envelope ``{"hashes": [...], "eph": X25519 public key or None}``.
   The gossip layer has already checked its signature, admission and replay window.
2. The holder answers with one signed envelope ``chunks.reply`` carrying its own ephemeral key (or
   None): the requester checks it came from the holder it asked, so both ends are authenticated.
3. Then, for each hash in order, a raw frame: a status byte (OK, MISSING, ERROR), a 4-byte
   length, the bytes. With keys exchanged (the transfer crosses clusters), each payload is sealed
   with XSalsa20-Poly1305 under the X25519 session key and a counter nonce (forward secret: the
   ephemeral keys are never stored).

Payload frames are not signed: a chunk is checked against its hash by the receiver before it is
used or stored, so a holder can withhold data but never alter it unseen.

Keep-alive: a request may say ``"keep": true``; a holder that agrees answers ``"keep": true`` and,
after the last frame, waits up to ``KEEP_IDLE`` seconds for the next signed request on the same
connection (checked like the first: same sender, admitted, not replayed). A reader fetching a file
chunk by chunk thus pays one TCP connection per holder, not one per chunk. Each request still has
its own ephemeral keys when it crosses clusters.

The requesting side runs in threads (``Transfer.run`` on ``transfer_pool``): blocking sockets,
each frame received with one ``recv`` into its final buffer, decrypted and hashed there, all
without the GIL, so a cold read's bytes never pass through the event loop (profiles of the asyncio
version showed the loop saturated by stream buffering, hashing and signing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public

from mesh.core.codec import MAX_STREAM_MESSAGE, open_envelope, seal
from mesh.core.manifest import HASH_HEX_LEN, chunk_hash
from mesh.errors import CorruptChunk, EltonError, ProtocolError
from mesh.runtime.gossip import (
    FRAME_HEADER,
    STREAM_TIMEOUT,
    GossipService,
    StreamRequest,
    read_frame,
    write_frame,
)
from mesh.store.cache import ChunkCache
from mesh.store.chunks import ChunkStore

log = logging.getLogger("elton.transfer")

KIND = "chunks"
OK, MISSING, ERROR = 0, 1, 2
HEADER = struct.Struct(">BI")
MAX_HASHES_PER_REQUEST = 4096
MAX_CHUNK_FRAME = 16 * 1024 * 1024 + 64
PREFETCH = 4
CHUNK_TIMEOUT = 60.0  # one chunk frame may take this long (a slow WAN link)
KEEP_IDLE = 5.0  # a holder keeps an idle kept-alive connection this long
KEEP_IDLE_CLIENT = 3.0  # a requester reuses an idle connection only this long (under the holder's)
MAX_KEPT_SERVED = 32  # kept-alive connections a holder serves at once (each holds a stream slot)
MAX_KEPT_PER_HOLDER = 8  # idle connections a requester keeps per holder
TRANSFER_THREADS = 32  # transfers carried at once by one process (threads blocked in recv cost little)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(nacl.bindings.crypto_secretbox_NONCEBYTES, "big")


def _session_key(mine: nacl.public.PrivateKey, theirs: bytes) -> bytes:
    return nacl.public.Box(mine, nacl.public.PublicKey(theirs)).shared_key()


class ChunkServer:
    """Serves the chunks this host holds to admitted hosts."""

    def __init__(self, gossip: GossipService, chunks: ChunkStore, loop_executor: Any = None,
                 cache: ChunkCache | None = None) -> None:
        self.gossip = gossip
        self.chunks = chunks
        self.executor = loop_executor
        self.cache = cache  # cached copies being served are pinned, and count as used
        self.served_bytes = 0
        self.served_chunks = 0
        self.requests = 0  # signed requests served (a batch of chunks is one)
        self.kept = 0  # kept-alive connections open now
        gossip.register_stream_handler(KIND, self._serve)

    async def _serve(self, request: StreamRequest) -> None:
        keep = isinstance(request.body, dict) and request.body.get("keep") is True and self.kept < MAX_KEPT_SERVED
        if not keep:
            await self._serve_one(request, keep=False)
            return
        self.kept += 1
        try:
            await self._serve_one(request, keep=True)
            while True:  # the next request on this connection, or the end of it
                try:
                    frame = await asyncio.wait_for(read_frame(request.reader), KEEP_IDLE)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                env = open_envelope(frame, MAX_STREAM_MESSAGE)
                if env.kind != KIND or env.sender != request.sender:
                    raise ProtocolError("bad_message", "another request on a kept chunks connection")
                self.gossip.check_sender(env)  # still admitted, not replayed
                request = StreamRequest(env.kind, env.sender, env.sender_public_key, env.seq, env.body,
                                        request.peer, request.reader, request.writer)
                await self._serve_one(request, keep=True)
        finally:
            self.kept -= 1

    async def _serve_one(self, request: StreamRequest, keep: bool) -> None:
        self.requests += 1
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("hashes"), list):
            raise ProtocolError("bad_message", "chunks request")
        hashes = body["hashes"]
        if len(hashes) > MAX_HASHES_PER_REQUEST or not all(
                isinstance(h, str) and len(h) == HASH_HEX_LEN for h in hashes):
            raise ProtocolError("bad_message", "chunks request hashes")
        eph = body.get("eph")
        key = None
        reply: dict[str, Any] = {"eph": None, "keep": keep}
        if eph is not None:
            if not isinstance(eph, bytes) or len(eph) != 32:
                raise ProtocolError("bad_message", "ephemeral key")
            mine = nacl.public.PrivateKey.generate()
            key = _session_key(mine, eph)
            reply["eph"] = bytes(mine.public_key)
        if self.cache is None:
            await self._send(request, hashes, key, reply)
            return
        held = self.cache.acquire(dict.fromkeys(hashes))
        try:
            for h in held:
                self.cache.touch(h)
            await self._send(request, hashes, key, reply)
        finally:
            self.cache.release(held)

    async def _send(self, request: StreamRequest, hashes: list[str], key: bytes | None, reply: dict[str, Any]) -> None:
        writer = request.writer
        write_frame(writer, self.gossip.seal(f"{KIND}.reply", reply))
        loop = asyncio.get_running_loop()
        reads = [loop.run_in_executor(self.executor, self._read, h) for h in hashes[:PREFETCH]]
        for i, _h in enumerate(hashes):
            if i + PREFETCH < len(hashes):
                reads.append(loop.run_in_executor(self.executor, self._read, hashes[i + PREFETCH]))
            status, data = await reads[i]
            reads[i] = None  # type: ignore[call-overload]  # let the bytes go
            if key is not None and status == OK:
                data = nacl.bindings.crypto_secretbox(data, _nonce(i), key)
            writer.write(HEADER.pack(status, len(data)))
            writer.write(data)
            if status == OK:  # counted when handed to the socket: the reader may have it before drain returns
                self.served_chunks += 1
                self.served_bytes += len(data)
            await writer.drain()

    def _read(self, h: str) -> tuple[int, bytes]:
        try:
            return OK, self.chunks.read(h)
        except EltonError as exc:  # missing or corrupt here (a corrupt copy was quarantined)
            return (MISSING if exc.http_status == 404 else ERROR), b""


class _Idle:
    """Idle kept-alive sockets to holders, per requesting GossipService: (addr, holder) -> sockets.
    Used from transfer threads, hence the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: dict[tuple[tuple[str, int], str], list[tuple[socket.socket, float]]] = {}

    def take(self, addr: tuple[str, int], holder: str) -> socket.socket | None:
        now = time.monotonic()
        with self.lock:
            conns = self.idle.get((addr, holder))
            while conns:
                sock, since = conns.pop()
                if now - since < KEEP_IDLE_CLIENT and _still_open(sock):
                    return sock
                sock.close()
        return None

    def give(self, addr: tuple[str, int], holder: str, sock: socket.socket) -> None:
        with self.lock:
            conns = self.idle.setdefault((addr, holder), [])
            if len(conns) < MAX_KEPT_PER_HOLDER:
                conns.append((sock, time.monotonic()))
                return
        sock.close()


def _still_open(sock: socket.socket) -> bool:
    """False when the holder closed the idle connection (it sends nothing between requests)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    """Blocking I/O bounded by the kernel (SO_RCVTIMEO/SO_SNDTIMEO), so ``recv(n, MSG_WAITALL)``
    fills a whole frame in one call without the GIL; a timeout surfaces as an OSError."""
    sec = int(seconds)
    tv = struct.pack("ll", sec, int((seconds - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = sock.recv(n, socket.MSG_WAITALL) if n else b""
    if len(data) == n:
        return data
    parts, got = [data], len(data)
    while got < n:  # interrupted (a timeout or a signal) or the peer closed
        more = sock.recv(n - got, socket.MSG_WAITALL)
        if not more:
            raise ConnectionError(f"connection closed with {n - got} of {n} bytes unread")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


_idle: weakref.WeakKeyDictionary[GossipService, _Idle] = weakref.WeakKeyDictionary()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def transfer_pool() -> ThreadPoolExecutor:
    """The threads that carry chunk transfers (mostly blocked in the kernel, so there are many)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="elton-transfer")
        return _pool


OnChunk = Callable[[int, str, "bytes | None", "str | None"], None]


class Transfer:
    """One request for chunks to one holder, carried out by a transfer thread (``run``).

    The bytes never pass through the event loop: the thread receives each frame with one blocking
    ``recv`` into its final buffer, decrypts it and hashes it (all three release the GIL), and hands
    ``(index, hash, bytes or None, BLAKE3 digest of the bytes)`` to ``on_chunk``. The digest is of
    what arrived, not a verdict: the caller compares it with the hash it asked for. The request's
    sequence number is taken when the Transfer is made, on the event loop (the gossip counter is
    not thread-safe); it is signed in the thread.
    """

    def __init__(self, gossip: GossipService, addr: tuple[str, int], holder: str, hashes: list[str], *,
                 encrypt: bool, timeout: float = STREAM_TIMEOUT) -> None:
        if len(hashes) > MAX_HASHES_PER_REQUEST:
            raise ValueError(f"at most {MAX_HASHES_PER_REQUEST} hashes per request")
        self.addr, self.holder, self.hashes, self.timeout, self.encrypt = addr, holder, hashes, timeout, encrypt
        self.identity, self.seq = gossip.identity, gossip.next_seq()
        self.mine: nacl.public.PrivateKey | None = None
        self.frame = b""
        self.keep = False  # the holder agreed to keep the connection for our next request
        self.idle = _idle.setdefault(gossip, _Idle())
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def abort(self) -> None:
        """Stop the transfer from any thread; a thread blocked in ``recv`` wakes up at once."""
        self.stopped.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _use(self, sock: socket.socket | None) -> socket.socket | None:
        with self._lock:
            self._sock = sock
        if sock is not None and self.stopped.is_set():
            self.abort()
        return sock

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr, timeout=self.timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _ask(self, sock: socket.socket) -> bytes:
        _set_timeout(sock, self.timeout)
        sock.sendall(self.frame)
        (size,) = FRAME_HEADER.unpack(_recv_exactly(sock, FRAME_HEADER.size))
        if size > MAX_STREAM_MESSAGE:
            raise ProtocolError("oversized", f"frame of {size} bytes")
        return _recv_exactly(sock, size)

    def _seal(self) -> None:
        # here, in the transfer thread: signing and key generation keep the event loop free
        self.mine = nacl.public.PrivateKey.generate() if self.encrypt else None
        body = {"hashes": self.hashes, "eph": bytes(self.mine.public_key) if self.mine else None, "keep": True}
        sealed = seal(self.identity, KIND, self.seq, body)
        self.frame = FRAME_HEADER.pack(len(sealed)) + sealed

    def run(self, on_chunk: OnChunk) -> None:
        """In a transfer thread: raises what the network or the holder did wrong."""
        self._seal()
        sock = self.idle.take(self.addr, self.holder)
        reused = sock is not None
        done = False
        try:
            if sock is None:
                sock = self._connect()
            self._use(sock)
            try:
                frame = self._ask(sock)
            except (ConnectionError, TimeoutError, BlockingIOError):
                if not reused or self.stopped.is_set():
                    raise
                sock.close()  # the holder closed the idle connection just before our request: a new one
                sock = self._use(self._connect())
                assert sock is not None
                frame = self._ask(sock)
            key = self._handshake(frame)
            _set_timeout(sock, CHUNK_TIMEOUT)
            for i, h in enumerate(self.hashes):
                status, size = HEADER.unpack(_recv_exactly(sock, HEADER.size))
                if size > MAX_CHUNK_FRAME:
                    raise ProtocolError("oversized", f"chunk frame of {size} bytes")
                data = _recv_exactly(sock, size)
                if self.stopped.is_set():
                    return
                if status != OK:
                    on_chunk(i, h, None, None)
                    continue
                if key is not None:
                    try:
                        data = nacl.bindings.crypto_secretbox_open(data, _nonce(i), key)
                    except nacl.exceptions.CryptoError as exc:
                        raise CorruptChunk(f"chunk {h} from {self.holder[:12]} failed decryption") from exc
                on_chunk(i, h, data, chunk_hash(data))
            done = self.keep
        except OSError as exc:
            if self.stopped.is_set():
                return
            if isinstance(exc, BlockingIOError):  # SO_RCVTIMEO expired
                raise TimeoutError(f"holder {self.holder[:12]} sent nothing for too long") from exc
            raise
        finally:
            self._use(None)
            if sock is not None:
                if done and not self.stopped.is_set():  # every frame read: at a request boundary
                    self.idle.give(self.addr, self.holder, sock)
                else:
                    sock.close()

    def _handshake(self, frame: bytes) -> bytes | None:
        env = open_envelope(frame, MAX_STREAM_MESSAGE)
        if env.kind == "error":
            raise EltonError(f"holder {self.holder[:12]} refused: {env.body}")
        if env.kind != f"{KIND}.reply" or env.sender != self.holder or not isinstance(env.body, dict):
            raise ProtocolError("bad_message", f"chunks reply from {env.sender[:12]}, expected {self.holder[:12]}")
        self.keep = env.body.get("keep") is True
        if self.mine is None:
            return None
        theirs = env.body.get("eph")
        if not isinstance(theirs, bytes) or len(theirs) != 32:
            raise ProtocolError("bad_message", "the holder did not agree on encryption")
        return _session_key(self.mine, theirs)


_END = object()


async def carry(transfer: Transfer, on_chunk: OnChunk) -> None:
    """Run ``transfer`` on a transfer thread. ``on_chunk`` is called on this event loop for each chunk,
    in order, and every call comes before this returns (or raises the thread's error): both reach the
    loop through its queue of callbacks. Cancelled, it stops the thread."""
    loop = asyncio.get_running_loop()

    def in_thread(i: int, h: str, data: bytes | None, digest: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is stopping
            loop.call_soon_threadsafe(on_chunk, i, h, data, digest)

    done = loop.run_in_executor(transfer_pool(), transfer.run, in_thread)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        transfer.abort()
        raise


async def fetch_chunks(gossip: GossipService, addr: tuple[str, int], holder: str, hashes: list[str], *,
                       encrypt: bool, timeout: float = STREAM_TIMEOUT) -> AsyncIterator[tuple[str, bytes | None]]:
    """Ask ``holder`` at ``addr`` for chunks; yield (hash, bytes) in order, bytes None when it lacks one
    or sent other bytes (checked against the hash by the transfer thread, which hashed them anyway).

    The connection is kept for the next request to the same holder when the holder agrees; a kept one
    the holder closed meanwhile is replaced by a new connection once, before anything was yielded.
    """
    transfer = Transfer(gossip, addr, holder, hashes, encrypt=encrypt, timeout=timeout)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def on_chunk(_i: int, h: str, data: bytes | None, digest: str | None) -> None:
        queue.put_nowait((h, data if digest == h else None))

    carrying = asyncio.ensure_future(carry(transfer, on_chunk))
    carrying.add_done_callback(lambda _t: queue.put_nowait(_END))  # after every chunk
    try:
        for _ in hashes:
            item = await queue.get()
            if item is _END:
                await carrying  # the thread's error
                raise ProtocolError("truncated", f"holder {holder[:12]} ended the transfer early")
            yield item
        await carrying
    finally:
        if not carrying.done():
            carrying.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await carrying
