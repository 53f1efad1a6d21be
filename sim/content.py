"""Simulated file content: chunks are (hash, size) without the bytes.

A chunk's hash is the real ``chunk_hash`` of a short deterministic token, so a core that
verifies hashes can be fed the token as the chunk's data and agree. Files are cut into
fixed-size chunks; an edit replaces the chunks it touches and keeps the others, so the
systems see the same sharing of chunks between versions as a content-defined chunker gives.
"""

from __future__ import annotations

from mesh.core.manifest import ChunkRef, chunk_hash


def chunk_token(key: str, generation: int, index: int) -> bytes:
    """The stand-in bytes of one chunk; its hash is the chunk's name."""
    return f"{key}|{generation}|{index}".encode()


def file_chunks(key: str, generation: int, size: int, chunk_size: int) -> tuple[ChunkRef, ...]:
    """The chunks of a freshly written file of ``size`` bytes."""
    out = []
    offset = 0
    index = 0
    while offset < size:
        n = min(chunk_size, size - offset)
        out.append(ChunkRef(chunk_hash(chunk_token(key, generation, index)), n))
        offset += n
        index += 1
    return tuple(out)


def edited_chunks(chunks: tuple[ChunkRef, ...], key: str, generation: int, offset: int, length: int,
                  chunk_size: int) -> tuple[tuple[ChunkRef, ...], int]:
    """Replace the chunks that ``[offset, offset + length)`` touches; return (chunks, bytes changed)."""
    first = offset // chunk_size
    last = (offset + max(length, 1) - 1) // chunk_size
    out = list(chunks)
    changed = 0
    for i in range(first, min(last, len(out) - 1) + 1):
        out[i] = ChunkRef(chunk_hash(chunk_token(key, generation, i)), out[i].size)
        changed += out[i].size
    return tuple(out), changed


def content_hash(chunks: tuple[ChunkRef, ...]) -> str:
    """The content hash of a simulated file: the hash of its chunk list."""
    return chunk_hash("".join(c.hash for c in chunks).encode())
