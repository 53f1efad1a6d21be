"""Simulated file content: chunks are (hash, size) without the bytes.

A chunk's hash is the real ``chunk_hash`` of a short deterministic token. ``chunk_data`` gives a
core that verifies chunks (``mesh.core.fetch.FetchPlanner``) what stands for the chunk's bytes:
a ``SimChunk``, the token as a ``bytes`` (so BLAKE3 really hashes it and a wrong token fails
the check) whose ``len()`` is the chunk's simulated size (so the size check is real too), while
the simulator never holds or hashes megabytes of bytes it does not have. Files are cut into
fixed-size chunks; an edit replaces the chunks it touches and keeps the others, so the
systems see the same sharing of chunks between versions as a content-defined chunker gives.
"""

from __future__ import annotations

from mesh.core.manifest import ChunkRef, chunk_hash

_tokens: dict[str, bytes] = {}  # chunk hash -> its token (deterministic; only grows by what workloads make)


class SimChunk(bytes):
    """The stand-in bytes of a chunk: the token's bytes, with the simulated size as its length."""

    size: int

    def __new__(cls, token: bytes, size: int) -> SimChunk:
        obj = super().__new__(cls, token)
        obj.size = size
        return obj

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:  # bytes(chunk) (the planner keeps a copy) stays a SimChunk
        return self


def _ref(token: bytes, size: int) -> ChunkRef:
    h = chunk_hash(token)
    _tokens[h] = token
    return ChunkRef(h, size)


def chunk_data(ref: ChunkRef) -> SimChunk:
    """What a holder of ``ref`` serves: verifies against ``ref`` (hash and size)."""
    return SimChunk(_tokens[ref.hash], ref.size)


def chunk_ref_of(data: bytes) -> ChunkRef:
    """The (hash, size) of what was delivered, computed from the data itself."""
    return ChunkRef(chunk_hash(data), len(data))


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
        out.append(_ref(chunk_token(key, generation, index), n))
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
        out[i] = _ref(chunk_token(key, generation, i), out[i].size)
        changed += out[i].size
    return tuple(out), changed


def content_hash(chunks: tuple[ChunkRef, ...]) -> str:
    """The content hash of a simulated file: the hash of its chunk list."""
    return chunk_hash("".join(c.hash for c in chunks).encode())
