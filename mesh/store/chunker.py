"""Content-defined chunking (FastCDC), so an edit in the middle of a file changes only nearby chunks.

Average chunk about 640 KiB (FastCDC's avg + min), never above 2 MiB: a 1 MiB rewrite changes
about 2 MiB of chunks, and a 1 GiB file is about 1,600 files on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

AVG_SIZE = 512 * 1024
MIN_SIZE = 128 * 1024
MAX_SIZE = 2 * 1024 * 1024
READ_SIZE = 4 * 1024 * 1024


def _cutter() -> FastCDC:
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)


class StreamChunker:
    """Cut a stream fed piece by piece (as an HTTP body arrives) into the same chunks as the whole.

    A cut point depends only on the bytes from the chunk's start up to MAX_SIZE after it, so a chunk
    is final once MAX_SIZE bytes past its start are buffered; at most about 2 x MAX_SIZE + one feed
    stays in memory.
    """

    def __init__(self) -> None:
        self._cdc = _cutter()
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        if len(self._buf) < 2 * MAX_SIZE:
            return []
        cuts = self._cuts(final=False)
        return self._take(cuts)

    def finish(self) -> list[bytes]:
        """The remaining chunks; an empty input gives no chunk."""
        return self._take(self._cuts(final=True)) if self._buf else []

    def _cuts(self, final: bool) -> list[tuple[int, int]]:
        # Only offsets leave this function: pyfastcdc's chunks are views into the buffer, and a
        # bytearray cannot be resized while a view of it is alive.
        cuts: list[tuple[int, int]] = []
        limit = len(self._buf)
        for chunk in self._cdc.cut_buf(self._buf):
            if not final and chunk.offset + MAX_SIZE > limit:
                break
            cuts.append((chunk.offset, chunk.length))
        return cuts

    def _take(self, cuts: list[tuple[int, int]]) -> list[bytes]:
        with memoryview(self._buf) as view:
            out = [view[off : off + n].tobytes() for off, n in cuts]
        if cuts:
            off, n = cuts[-1]
            del self._buf[: off + n]
        return out


def chunk_stream(stream: BinaryIO) -> Iterator[bytes]:
    """Cut a readable binary file object into chunks, reading it once, in bounded memory."""
    chunker = StreamChunker()
    while True:
        data = stream.read(READ_SIZE)
        if not data:
            break
        yield from chunker.feed(data)
    yield from chunker.finish()


def chunk_bytes(data: bytes) -> list[bytes]:
    chunker = StreamChunker()
    return chunker.feed(data) + chunker.finish()
