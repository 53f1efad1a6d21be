"""A node's versioned store: streamed ingest into chunks, version issuance, verified reads.

On a single host the node issues versions itself, inside the metadata transaction that records
them (``last + 1``, compare-and-set on the expected parent). Chunk files are fsynced, and their
directories too, before the version that names them is committed, so a crash at any point leaves
the old state or the new one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from mesh.core.identity import Identity
from mesh.core.keys import validate_key
from mesh.core.manifest import ChunkRef, Draft, Manifest, chunk_hash, issue
from mesh.errors import (
    ChunkMissing,
    Conflict,
    EltonError,
    IncompleteUpload,
    InvalidRequest,
    KeyNotFound,
    TooLarge,
    Unavailable,
    VersionNotFound,
)
from mesh.store.cache import ChunkCache
from mesh.store.chunker import MAX_SIZE, StreamChunker
from mesh.store.chunks import ChunkStore, check_hash
from mesh.store.meta import MetaStore, record_chunks, store_version

MAX_INFLIGHT_CHUNKS = 16  # bounds memory of an upload: about 16 x 2 MiB beyond the chunker's buffer
PREFETCH_CHUNKS = 4
STORE_THREADS = 8  # fsyncs in parallel: the virtual disks here write much faster with a deeper queue
MAX_CHUNK_UPLOAD = 8 * MAX_SIZE
SMALL_PIECE = 64 * 1024  # a piece up to this size is hashed on the loop (a few microseconds)
MAX_RECORDED_CHECK = 64  # a commit of up to this many chunks skips recording those recorded already


def content_hash_of(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class Slice:
    """A byte range of one chunk: the part of ``chunk`` from ``start`` to ``end`` (exclusive)."""

    chunk: ChunkRef
    start: int
    end: int


def slices(manifest: Manifest, start: int, end: int) -> list[Slice]:
    """The chunk pieces covering bytes [start, end) of a version."""
    out: list[Slice] = []
    offset = 0
    for ref in manifest.chunks:
        lo, hi = offset, offset + ref.size
        if hi > start and lo < end:
            out.append(Slice(ref, max(start, lo) - lo, min(end, hi) - lo))
        offset = hi
        if offset >= end:
            break
    return out


def _unique(refs: list[ChunkRef]) -> list[ChunkRef]:
    seen: set[str] = set()
    return [r for r in refs if not (r.hash in seen or seen.add(r.hash))]  # type: ignore[func-returns-value]


def _issue_op(draft: Draft, expected_parent: int | None, identity: Identity, now: float
              ) -> Callable[[sqlite3.Connection], Manifest]:
    def op(conn: sqlite3.Connection) -> Manifest:
        row = conn.execute("SELECT version FROM latest WHERE key=?", (draft.key,)).fetchone()
        last = row[0] if row else 0
        if expected_parent is not None and expected_parent != last:
            raise Conflict(f"{draft.key} is at version {last}, not {expected_parent}")
        manifest = issue(draft, version=last + 1, parent=last, now=now, issuer=identity)
        store_version(manifest)(conn)
        return manifest

    return op


IssueFn = Callable[[Draft, "int | None"], Awaitable[Manifest]]
"""Issues a version for a draft (expected parent or None) somewhere else: the key's home master.
Returns a manifest whose signature it has checked (or that it signed itself)."""


class Remote(Protocol):
    """What a node asks the rest of the mesh for: versions and chunks it does not hold."""

    async def resolve(self, key: str, version: int | None) -> Manifest:
        """The signed manifest of ``key@version`` (the latest, as the key's home knows it, for None);
        raises KeyNotFound / VersionNotFound, or Unavailable when no master can be reached."""
        ...

    def fetch(self, manifest: Manifest | None, refs: list[ChunkRef],
              fallback: str | None = None) -> AsyncIterator[bytes]:
        """The verified bytes of ``refs`` (distinct chunks of ``manifest``, or loose ones: directory
        objects of a tree), in order, from the cheapest holders; each is stored here as a cached copy
        on the way (this host becomes a holder). A ref of size 0 is checked by its hash alone.
        ``fallback``: a node id to try for chunks no master knows a holder of yet."""
        ...

    async def versions(self, key: str, limit: int, before: int | None) -> list[Manifest]:
        """The key's versions, newest first, as its home knows them."""
        ...


class Repository:
    """A node's store. Versions are issued locally unless an ``issuer`` is set (a mesh with masters):
    then the draft goes to it, and the signed manifest it returns is recorded here like a local one."""

    def __init__(self, data_dir: Path, identity: Identity, clock: Callable[[], float],
                 issuer: IssueFn | None = None, cache_quota: int | None = None) -> None:
        self.identity = identity
        self.clock = clock
        self.issuer = issuer
        self.remote: Remote | None = None  # set by the daemon once the mesh is up
        # Runs before a version is issued: puts its chunks on more holders (durability.ChunkReplicator)
        self.before_issue: Callable[[list[ChunkRef]], Awaitable[object]] | None = None
        # Told of every chunk this host starts to hold, so the mesh knows where to fetch it
        self.on_stored: Callable[[list[tuple[str, int]]], None] | None = None
        self._fetching: dict[str, asyncio.Future[bytes]] = {}  # chunk -> its one fetch on this host
        self._fetch_tasks: set[asyncio.Task[None]] = set()
        self.chunks = ChunkStore(data_dir / "chunks")
        self.meta = MetaStore(data_dir / "meta.sqlite")
        self.executor = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")
        # Chunks written by uploads still in flight: a failed upload removes the chunk files it
        # created unless another upload in flight uses them or a committed version records them.
        self._inflight_lock = threading.Lock()
        self._inflight: Counter[str] = Counter()
        # Chunks fetched from other hosts, under cache_quota (None: unlimited); the rest are kept
        self.cache = ChunkCache(self.chunks, self.meta, cache_quota, lock=self._inflight_lock,
                                busy=self._inflight.__contains__)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.cache.close()
        self.meta.close()

    async def _in_thread(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- writes -----------------------------------------------------------------------------------
    def _store_piece(self, piece: bytes, created: set[str]) -> ChunkRef:
        h = chunk_hash(piece)
        with self._inflight_lock:
            self._inflight[h] += 1
        try:
            if self.chunks.write(h, piece):
                created.add(h)
        except BaseException:
            self._release([h], set())
            raise
        return ChunkRef(h, len(piece))

    def _release(self, hashes: list[str], remove_if_unused: set[str]) -> None:
        with self._inflight_lock:
            for h in hashes:
                self._inflight[h] -= 1
                if self._inflight[h] <= 0:
                    del self._inflight[h]
            orphans = [h for h in remove_if_unused if h not in self._inflight]
            recorded = self.meta.has_chunks(orphans) if orphans else set()
            for h in orphans:
                if h not in recorded:
                    self.chunks.remove(h)

    async def ingest(self, key: str, body: AsyncIterator[bytes], *, expected_size: int | None = None,
                     expected_parent: int | None = None, meta: dict | None = None,
                     max_size: int | None = None) -> Manifest:
        """Store a streamed body as the next version of ``key``; nothing is visible unless it all arrived."""
        validate_key(key)
        chunker = StreamChunker()
        whole = blake3.blake3()
        refs: list[ChunkRef] = []
        inflight: deque[asyncio.Future[ChunkRef]] = deque()
        created: set[str] = set()
        total = 0
        loop = asyncio.get_running_loop()

        def start(piece: bytes) -> None:
            if len(piece) <= SMALL_PIECE:  # hashed here: a small chunk stored already needs no thread
                h = chunk_hash(piece)
                with self._inflight_lock:  # counted before the check: a failed upload's clean-up keeps it
                    self._inflight[h] += 1
                if self.chunks.has(h):
                    done: asyncio.Future[ChunkRef] = loop.create_future()
                    done.set_result(ChunkRef(h, len(piece)))
                    inflight.append(done)
                    return
                self._release([h], set())  # counters only: the thread counts it again
            inflight.append(loop.run_in_executor(self.executor, self._store_piece, piece, created))

        try:
            async for data in body:
                total += len(data)
                if max_size is not None and total > max_size:
                    raise TooLarge(f"{key}: more than {max_size} bytes")
                whole.update(data)
                for piece in chunker.feed(data):
                    start(piece)
                    while len(inflight) > MAX_INFLIGHT_CHUNKS:
                        refs.append(await inflight.popleft())
            for piece in chunker.finish():
                start(piece)
            while inflight:
                refs.append(await inflight.popleft())
            if expected_size is not None and total != expected_size:
                raise IncompleteUpload(f"{key}: received {total} of {expected_size} bytes")
            manifest = await self._commit_refs(key, refs, total, whole.hexdigest(), "file", meta or {},
                                               expected_parent)
        except BaseException:
            # Let the writes already handed to threads finish (at most MAX_INFLIGHT_CHUNKS): a cancelled
            # future would not stop its thread, and its chunk would escape the clean-up below.
            done = await asyncio.gather(*inflight, return_exceptions=True)
            refs.extend(r for r in done if isinstance(r, ChunkRef))
            await self._in_thread(self._release, [r.hash for r in refs], created)
            raise
        self._release([r.hash for r in refs], set())  # counters only (nothing to remove): no thread hop
        return manifest

    async def _commit_refs(self, key: str, refs: list[ChunkRef], size: int, content_hash: str, kind: str,
                           meta: dict, expected_parent: int | None, durable: Sequence[ChunkRef] = ()) -> Manifest:
        draft = Draft(key=key, size=size, content_hash=content_hash, chunks=tuple(refs),
                      author=self.identity.node_id, kind=kind, meta=meta)
        pairs = sorted({(r.hash, r.size) for r in refs})
        await self.cache.keep((h for h, _ in pairs), self.executor)  # a cached copy named here is kept now
        # The chunks' directories are fsynced, the chunks recorded and their copies made on other hosts
        # at once (three waits for a disk or a peer in parallel, not one after the other); the version
        # is issued only once all three are done. All three finish before an error is raised, so the
        # clean-up of a failed upload never races the recording of its chunks. Chunks that were here
        # already (the same content again) need neither: their directories' last fsyncs covered them
        # and their records are committed.
        hashes = {h for h, _ in pairs}
        new = pairs
        if len(pairs) <= MAX_RECORDED_CHECK:  # a small commit asks which are recorded (one indexed read)
            recorded = self.meta.has_chunks(list(hashes)) if pairs else set()
            new = [p for p in pairs if p[0] not in recorded]
        async def record() -> None:
            await self.meta.write(record_chunks(new))
            self._stored(new)

        steps: list[Awaitable[object]] = []
        if self.chunks.dirs_to_sync(hashes):
            steps.append(self._in_thread(self.chunks.sync_dirs, hashes))
        if new:
            steps.append(record())
        if self.before_issue is not None and (refs or durable):
            steps.append(self.before_issue(_unique([*refs, *durable])))
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if self.issuer is not None:
            manifest = await self.issuer(draft, expected_parent)  # verified by the issuer (IssueFn)
            # a local copy: the masters of the key's replica set hold the version durably already
            await self.meta.write(store_version(manifest), durable=False)
            return manifest
        return await self.meta.write(_issue_op(draft, expected_parent, self.identity, self.clock()))

    def _stored(self, pairs: list[tuple[str, int]]) -> None:
        if self.on_stored is not None and pairs:
            self.on_stored(pairs)

    async def learn(self, manifest: Manifest) -> None:
        """Record a version issued elsewhere (verified by its signature) so it can be served here."""
        await self.meta.write(store_version(manifest.verify()))

    async def put_chunk(self, expected_hash: str, data: bytes) -> bool:
        check_hash(expected_hash)
        if len(data) > MAX_CHUNK_UPLOAD:
            raise TooLarge(f"a chunk is at most {MAX_CHUNK_UPLOAD} bytes")
        actual = chunk_hash(data)
        if actual != expected_hash:
            raise InvalidRequest(f"chunk body hashes to {actual}, not {expected_hash}")
        await self.cache.keep([expected_hash], self.executor)  # a cached copy of it is kept from now on
        created = await self._in_thread(self._write_and_sync, expected_hash, data)
        await self.meta.write(record_chunks([(expected_hash, len(data))]))
        self._stored([(expected_hash, len(data))])
        return created

    def _write_and_sync(self, h: str, data: bytes) -> bool:
        created = self.chunks.write(h, data)
        self.chunks.sync_dirs([h])
        return created

    def missing(self, hashes: list[str]) -> list[str]:
        for h in hashes:
            check_hash(h)
        # the records being written are read first: one that commits (and leaves ``recording``, from the
        # metadata thread) between the two reads is then seen by has_chunks, not missed by both
        recording = self.cache.recording & set(hashes)
        present = self.meta.has_chunks(hashes) | recording
        return [h for h in hashes if h not in present or not self.chunks.has(h)]

    async def commit(self, key: str, refs: list[ChunkRef], *, kind: str = "file", meta: dict | None = None,
                     content_hash: str | None = None, expected_parent: int | None = None,
                     durable: list[ChunkRef] | None = None) -> Manifest:
        """Issue a version from chunks already stored here (eltonfs trees, resumable uploads).

        ``durable``: chunks the version needs beyond its own list (an eltonfs tree's new directory
        objects and file chunks, which only its directory objects name). Each must be stored here,
        with that size; they are kept, and placed on ``copies`` holders with the version's own chunks
        before it is issued. The manifest does not list them."""
        validate_key(key)
        if kind not in ("file", "tree"):
            raise InvalidRequest(f"kind is 'file' or 'tree', not {kind!r}")
        absent = self.missing([r.hash for r in refs])
        if absent:
            raise ChunkMissing(f"{len(absent)} chunk(s) not uploaded, first {absent[0]}")
        extra = _unique(list(durable or ()))
        if extra:
            await self._in_thread(self._check_stored, extra)
        await self.cache.keep((r.hash for r in [*refs, *extra]), self.executor)  # cached copies named are kept
        whole = blake3.blake3()
        for r in refs:  # proves every chunk is intact and the sizes right, and yields the content hash
            data = await self.read_chunk(r.hash)
            if len(data) != r.size:
                raise InvalidRequest(f"chunk {r.hash} has {len(data)} bytes, not {r.size}")
            whole.update(data)
        actual = whole.hexdigest()
        if content_hash is not None and content_hash != actual:
            raise InvalidRequest(f"content hashes to {actual}, not {content_hash}")
        return await self._commit_refs(key, refs, sum(r.size for r in refs), actual, kind, meta or {},
                                       expected_parent, extra)

    def _check_stored(self, refs: list[ChunkRef]) -> None:
        """Raise ChunkMissing unless every chunk of ``refs`` is stored here with its size (a stat each)."""
        for r in refs:
            check_hash(r.hash)
        sizes = self.meta.chunk_sizes([r.hash for r in refs])
        absent = [r.hash for r in refs if r.hash not in sizes or not self.chunks.has(r.hash)]
        if absent:
            raise ChunkMissing(f"{len(absent)} durable chunk(s) not stored here, first {absent[0]}")
        wrong = next((r for r in refs if sizes[r.hash] != r.size), None)
        if wrong is not None:
            raise InvalidRequest(f"durable chunk {wrong.hash} has {sizes[wrong.hash]} bytes, not {wrong.size}")

    # -- reads ------------------------------------------------------------------------------------
    def resolve(self, key: str, version: int | None = None) -> Manifest:
        validate_key(key)
        latest = self.meta.latest_version(key)
        if latest == 0:
            raise KeyNotFound(key)
        wanted = latest if version is None else version
        manifest = self.meta.manifest(key, wanted) if 0 < wanted <= latest else None
        if manifest is None:
            raise VersionNotFound(f"{key}@{wanted} (latest is {latest})")
        return manifest

    async def find(self, key: str, version: int | None = None) -> Manifest:
        """Like ``resolve``, asking the mesh for what this node does not know.

        A versioned read is answered locally when the version is here (it never changes). The
        latest is the home's to say; when no master answers, the local latest is served (reads keep
        working during a partition) and a version unknown here is an error that says why.
        """
        if self.remote is None:
            return self.resolve(key, version)
        validate_key(key)
        if version is not None:
            local = self.meta.manifest(key, version)
            if local is not None:
                return local
        try:
            manifest = await self.remote.resolve(key, version)
        except Unavailable:
            if version is None and self.meta.latest_version(key):
                return self.resolve(key)
            raise
        await self.learn(manifest)
        return manifest

    async def read_chunk(self, h: str) -> bytes:
        return await self._in_thread(self.chunks.read, h)

    async def history(self, key: str, limit: int, before: int | None = None) -> list[Manifest]:
        """A key's versions, newest first: the home's list in a mesh (local when it is unreachable)."""
        if self.remote is not None:
            try:
                found = await self.remote.versions(key, limit, before)
            except Unavailable:
                found = []
            if found:
                return found
        self.resolve(key)  # KeyNotFound when nothing is known here either
        return self.meta.versions(key, limit, before)

    async def read_range_anywhere(self, manifest: Manifest, start: int, end: int) -> AsyncIterator[bytes]:
        """``read_range``, fetching from the mesh the chunks this node lacks (in order, verified)."""
        async for data in self._read_slices(manifest, slices(manifest, start, end)):
            yield data

    async def stream_chunks(self, refs: list[ChunkRef], author: str | None = None) -> AsyncIterator[bytes]:
        """The verified bytes of ``refs`` in order, from here or the mesh, with one fetch for all the
        missing ones (eltonfs reads a lower file's chunk list this way). ``author``: the node id of a
        host likely to hold them (the author of the tree version naming them), tried for the chunks
        no master knows a holder of yet (its holder report may still be on its way)."""
        async for data in self._read_slices(None, [Slice(r, 0, r.size) for r in refs], author):
            yield data

    async def _read_slices(self, manifest: Manifest | None, wanted: list[Slice],
                           fallback: str | None = None) -> AsyncIterator[bytes]:
        """Concurrent reads on this host share one fetch per chunk: a chunk already being fetched for
        another read is waited for, not fetched again (one WAN transfer per chunk per host, and the
        cluster's master makes it one per cluster)."""
        missing = _unique([s.chunk for s in wanted if not self.chunks.has(s.chunk.hash)])
        absent = {r.hash for r in missing}
        # the cached copies this read takes from disk are pinned (not evicted) until it ends
        local = self.cache.acquire(dict.fromkeys(s.chunk.hash for s in wanted if s.chunk.hash not in absent))
        try:
            async for data in self._read_pinned(manifest, wanted, missing, local, fallback):
                yield data
        finally:
            self.cache.release(local)

    async def _read_pinned(self, manifest: Manifest | None, wanted: list[Slice], missing: list[ChunkRef],
                           local: list[str], fallback: str | None) -> AsyncIterator[bytes]:
        for h in local:
            self.cache.touch(h)
        metrics = getattr(self.remote, "metrics", None)
        if metrics is not None:  # the remote counts what it fetches (misses); hits are ours to count
            absent = {r.hash for r in missing}  # a set: a list here made this count O(chunks^2) per read
            metrics.cache_hits += sum(s.chunk.hash not in absent for s in wanted)
        if not missing or self.remote is None:
            async for data in self._read_local(wanted):
                yield data
            return
        loop = asyncio.get_running_loop()
        mine = [r for r in missing if r.hash not in self._fetching]
        for r in mine:
            self._fetching[r.hash] = loop.create_future()
        waits = {r.hash: self._fetching[r.hash] for r in missing}
        if mine:
            task = loop.create_task(self._fetch_into(manifest, mine, fallback))
            self._fetch_tasks.add(task)
            task.add_done_callback(self._fetch_tasks.discard)
        uses = Counter(s.chunk.hash for s in wanted)
        for s in wanted:
            h = s.chunk.hash
            fut = waits.get(h)
            data = await asyncio.shield(fut) if fut is not None else await self.read_chunk(h)
            uses[h] -= 1
            if uses[h] == 0:
                waits.pop(h, None)  # let the bytes go once this read is past their last use
            yield data if (s.start, s.end) == (0, len(data)) else data[s.start : s.end]

    async def _fetch_into(self, manifest: Manifest | None, refs: list[ChunkRef], fallback: str | None) -> None:
        """Fetch ``refs`` from the mesh and hand each to the reads waiting for it; runs to the end even
        when the read that started it is gone (what it fetched is stored and serves the others)."""
        assert self.remote is not None
        left = {r.hash for r in refs}
        order = iter(refs)
        try:
            async for data in self.remote.fetch(manifest, refs, fallback):
                h = next(order).hash  # the remote yields verified chunks in the order asked: no second hash
                left.discard(h)
                fut = self._fetching.pop(h, None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
        except BaseException as exc:
            err = exc if isinstance(exc, EltonError) else Unavailable(f"fetch failed: {type(exc).__name__}")
            self._fail(left, err)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._fail(left, None)

    def _fail(self, hashes: set[str], err: EltonError | None) -> None:
        """Fail the waits of chunks a fetch did not deliver (ChunkMissing unless ``err`` says why)."""
        for h in hashes:
            fut = self._fetching.pop(h, None)
            if fut is not None and not fut.done():
                fut.set_exception(err or ChunkMissing(h))
                fut.exception()  # marked as seen: a wait nobody awaits any more must not warn

    async def read_range(self, manifest: Manifest, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield the verified bytes [start, end) of a version held here, reading a few chunks ahead."""
        async for data in self._read_local(slices(manifest, start, end)):
            yield data

    async def _read_local(self, wanted: list[Slice]) -> AsyncIterator[bytes]:
        pending: deque[tuple[Slice, asyncio.Future[bytes]]] = deque()
        loop = asyncio.get_running_loop()
        todo = iter(wanted)
        try:
            for s in todo:
                pending.append((s, loop.run_in_executor(self.executor, self.chunks.read, s.chunk.hash)))
                if len(pending) >= PREFETCH_CHUNKS:
                    break
            while pending:
                s, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, loop.run_in_executor(self.executor, self.chunks.read, nxt.chunk.hash)))
                data = await fut
                yield data if (s.start, s.end) == (0, len(data)) else data[s.start : s.end]
        finally:
            for _, fut in pending:
                fut.cancel()
