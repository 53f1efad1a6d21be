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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public

from mesh.core.codec import MAX_STREAM_MESSAGE, open_envelope
from mesh.core.manifest import HASH_HEX_LEN
from mesh.errors import CorruptChunk, EltonError, ProtocolError
from mesh.runtime.gossip import STREAM_TIMEOUT, GossipService, StreamRequest, read_frame, write_frame
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
            await writer.drain()
            if status == OK:
                self.served_chunks += 1
                self.served_bytes += len(data)

    def _read(self, h: str) -> tuple[int, bytes]:
        try:
            return OK, self.chunks.read(h)
        except EltonError as exc:  # missing or corrupt here (a corrupt copy was quarantined)
            return (MISSING if exc.http_status == 404 else ERROR), b""


class _Kept:
    """Idle kept-alive connections to holders, per requesting GossipService: (addr, holder) -> conns."""

    def __init__(self) -> None:
        self.idle: dict[tuple[tuple[str, int], str], list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}

    def take(self, addr: tuple[str, int], holder: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        conns = self.idle.get((addr, holder))
        now = time.monotonic()
        while conns:
            reader, writer, since = conns.pop()
            if now - since < KEEP_IDLE_CLIENT and not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    def give(self, addr: tuple[str, int], holder: str, reader: asyncio.StreamReader,
             writer: asyncio.StreamWriter) -> None:
        conns = self.idle.setdefault((addr, holder), [])
        if len(conns) >= MAX_KEPT_PER_HOLDER:
            writer.close()
            return
        conns.append((reader, writer, time.monotonic()))


async def _ask(gossip: GossipService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               body: dict[str, Any], timeout: float) -> bytes:
    write_frame(writer, gossip.seal(KIND, body))
    await writer.drain()
    return await asyncio.wait_for(read_frame(reader), timeout)


_kept: weakref.WeakKeyDictionary[GossipService, _Kept] = weakref.WeakKeyDictionary()


async def fetch_chunks(gossip: GossipService, addr: tuple[str, int], holder: str, hashes: list[str], *,
                       encrypt: bool, timeout: float = STREAM_TIMEOUT) -> AsyncIterator[tuple[str, bytes | None]]:
    """Ask ``holder`` at ``addr`` for chunks; yield (hash, bytes) in order, bytes None when it lacks one.

    The bytes are NOT yet verified: the caller checks each against its hash before using it. The
    connection is kept for the next request to the same holder when the holder agrees; a kept one
    the holder closed meanwhile is replaced by a new connection once, before anything was yielded.
    """
    if len(hashes) > MAX_HASHES_PER_REQUEST:
        raise ValueError(f"at most {MAX_HASHES_PER_REQUEST} hashes per request")
    kept = _kept.setdefault(gossip, _Kept())
    conn = kept.take(addr, holder)
    reused = conn is not None
    if conn is None:
        conn = await asyncio.wait_for(asyncio.open_connection(*addr, limit=MAX_CHUNK_FRAME), timeout)
    reader, writer = conn
    done = False
    try:
        mine = nacl.public.PrivateKey.generate() if encrypt else None
        body = {"hashes": hashes, "eph": bytes(mine.public_key) if mine else None, "keep": True}
        try:
            frame = await _ask(gossip, reader, writer, body, timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            writer.close()  # the holder closed the idle connection just before our request: a new one
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr, limit=MAX_CHUNK_FRAME), timeout)
            frame = await _ask(gossip, reader, writer, body, timeout)
        env = open_envelope(frame, MAX_STREAM_MESSAGE)
        if env.kind == "error":
            raise EltonError(f"holder {holder[:12]} refused: {env.body}")
        if env.kind != f"{KIND}.reply" or env.sender != holder or not isinstance(env.body, dict):
            raise ProtocolError("bad_message", f"chunks reply from {env.sender[:12]}, expected {holder[:12]}")
        key = None
        if mine is not None:
            theirs = env.body.get("eph")
            if not isinstance(theirs, bytes) or len(theirs) != 32:
                raise ProtocolError("bad_message", "the holder did not agree on encryption")
            key = _session_key(mine, theirs)
        for i, h in enumerate(hashes):
            status, size = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), CHUNK_TIMEOUT))
            if size > MAX_CHUNK_FRAME:
                raise ProtocolError("oversized", f"chunk frame of {size} bytes")
            data = await asyncio.wait_for(reader.readexactly(size), CHUNK_TIMEOUT)
            if status != OK:
                yield h, None
                continue
            if key is not None:
                try:
                    data = nacl.bindings.crypto_secretbox_open(data, _nonce(i), key)
                except nacl.exceptions.CryptoError as exc:
                    raise CorruptChunk(f"chunk {h} from {holder[:12]} failed decryption") from exc
            yield h, data
        done = env.body.get("keep") is True
    finally:
        if done:  # every frame read: the connection is at a request boundary
            kept.give(addr, holder, reader, writer)
        else:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
