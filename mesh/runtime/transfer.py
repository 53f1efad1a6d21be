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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
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
        gossip.register_stream_handler(KIND, self._serve)

    async def _serve(self, request: StreamRequest) -> None:
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("hashes"), list):
            raise ProtocolError("bad_message", "chunks request")
        hashes = body["hashes"]
        if len(hashes) > MAX_HASHES_PER_REQUEST or not all(
                isinstance(h, str) and len(h) == HASH_HEX_LEN for h in hashes):
            raise ProtocolError("bad_message", "chunks request hashes")
        eph = body.get("eph")
        key = None
        reply: dict[str, Any] = {"eph": None}
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


async def fetch_chunks(gossip: GossipService, addr: tuple[str, int], holder: str, hashes: list[str], *,
                       encrypt: bool, timeout: float = STREAM_TIMEOUT) -> AsyncIterator[tuple[str, bytes | None]]:
    """Ask ``holder`` at ``addr`` for chunks; yield (hash, bytes) in order, bytes None when it lacks one.

    The bytes are NOT yet verified: the caller checks each against its hash before using it.
    """
    if len(hashes) > MAX_HASHES_PER_REQUEST:
        raise ValueError(f"at most {MAX_HASHES_PER_REQUEST} hashes per request")
    mine = nacl.public.PrivateKey.generate() if encrypt else None
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr, limit=MAX_CHUNK_FRAME), timeout)
    try:
        body = {"hashes": hashes, "eph": bytes(mine.public_key) if mine else None}
        write_frame(writer, gossip.seal(KIND, body))
        await writer.drain()
        env = open_envelope(await asyncio.wait_for(read_frame(reader), timeout), MAX_STREAM_MESSAGE)
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
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
