"""The persistent chunk cache: copies this host fetched from others, under a byte quota (LRU).

Which chunks are evictable is decided by where they came from:

- a chunk this host **fetched** for a read (the reader becomes a holder) is a cached copy: it is
  listed in the ``cache_chunks`` table, counts against ``cache_quota`` and may be evicted, least
  recently used first;
- a chunk written here (a PUT, an uploaded chunk, a commit) or accepted as a ``copies`` replica is
  **kept**: it is not in that table, never counts against the quota and is never evicted. Those are
  the copies the mesh counts on, so a cached copy is never the last copy of a committed version. A
  cached copy that becomes one of them (committed here, or asked for as a replica) is kept from then
  on (``keep``).
- a cached copy in use (a read streaming it, a transfer serving it, a store writing it) is pinned
  until released (``acquire`` / ``release``) and is not evicted meanwhile.
- before a cached copy is evicted, the mesh is asked (``last_copy``, one question for a batch of
  victims) whether another live host holds it; one nobody else holds is pinned as the last copy
  (asked about again after ``RECHECK_SPARED``), and when the mesh cannot answer nothing is evicted.

The table holds each cached chunk's size and its last use (a logical clock), so the LRU order
survives a restart; last uses are written in batches (``FLUSH_EVERY`` touches or ``FLUSH_SECONDS``),
never one write per read. Start-up rebuilds the ``CachePolicy`` from the table, drops rows whose
file is gone and evicts down to the quota (which may have been lowered).

An eviction deletes the chunk file at once (in the caller's thread, under ``lock``, so a chunk an
upload is writing, ``busy(h)``, is skipped), queues the metadata delete and tells ``on_removed``
(the holder reporter) so the cluster's master stops routing readers here. When nothing more can be
evicted and the chunk does not fit, ``store_fetched`` returns False: the reader still gets the bytes,
this host just does not keep them (nor become their holder).

All methods but the writes handed to ``executor`` run on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any

from mesh.core.cache_policy import CachePolicy
from mesh.store.chunks import ChunkStore
from mesh.store.meta import MetaStore, schema_op

log = logging.getLogger("elton.cache")

UNLIMITED = 1 << 62
FLUSH_EVERY = 512  # touches before their last uses are written
FLUSH_SECONDS = 5.0
IN_USE = "use"
STORING = "store"
LAST_COPY = "last_copy"
VERIFIED_FOR = 60.0  # seconds an answer "another host holds it" stands for eviction
RECHECK_SPARED = 60.0  # a copy kept as the last one is asked about again after this long
EVICT_BATCH = 64 * 1024 * 1024  # bytes freed past the need at once, so the mesh is asked once per batch

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache_chunks ("
    " hash TEXT PRIMARY KEY, size INTEGER NOT NULL, last_use INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS cache_chunks_by_use ON cache_chunks(last_use)",
)


def _cached_op(h: str, size: int, use: int) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR IGNORE INTO chunks(hash, size) VALUES (?, ?)", (h, size))
        conn.execute("INSERT INTO cache_chunks(hash, size, last_use) VALUES (?, ?, ?) "
                     "ON CONFLICT(hash) DO UPDATE SET last_use=excluded.last_use", (h, size, use))

    return op


def _forget_op(hashes: list[str]) -> Callable[[sqlite3.Connection], None]:
    """Drop evicted cached copies: the chunk row only while the chunk is still a cached copy (a
    ``keep`` queued in between makes it a kept chunk, whose row must stay)."""

    def op(conn: sqlite3.Connection) -> None:
        rows = [(h,) for h in hashes]
        conn.executemany("DELETE FROM chunks WHERE hash=? AND hash IN (SELECT hash FROM cache_chunks)", rows)
        conn.executemany("DELETE FROM cache_chunks WHERE hash=?", rows)

    return op


def _keep_op(hashes: list[str]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM cache_chunks WHERE hash=?", [(h,) for h in hashes])

    return op


def _uses_op(uses: list[tuple[int, str]]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE cache_chunks SET last_use=? WHERE hash=?", uses)

    return op


def _logged(fut: Future[Any]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("cache metadata write failed: %s", exc)


class ChunkCache:
    def __init__(self, chunks: ChunkStore, meta: MetaStore, quota: int | None = None, *,
                 lock: threading.Lock | None = None, busy: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chunks = chunks
        self.meta = meta
        self.lock = lock or threading.Lock()
        self.busy = busy or (lambda h: False)
        self.clock = clock
        self.on_removed: Callable[[list[str]], None] | None = None
        # asks the mesh which of these chunks no other live host holds; set once the mesh is up
        self.last_copy: Callable[[list[str]], Awaitable[set[str]]] | None = None
        self._verified: dict[str, float] = {}  # chunk -> when another holder was confirmed
        self.spared = 0  # cached copies kept as the last copy the mesh knows of
        self._spared: dict[str, float] = {}  # chunk -> when it was kept as the last copy
        self.policy = CachePolicy(UNLIMITED if quota is None else quota)
        self.limited = quota is not None
        self._use: Counter[str] = Counter()  # chunk -> reads and transfers using it now
        self._storing: set[str] = set()  # fetched chunks being written
        # written and servable, their record not committed yet (discarded by the metadata writer's thread)
        self.recording: set[str] = set()
        self._dirty: dict[str, int] = {}  # chunk -> last use not written yet
        self._last_flush = clock()
        self.evictions = 0
        self.evicted_bytes = 0
        self.uncached = 0  # fetched chunks handed to the reader without being kept (no room)
        self.uncached_bytes = 0
        meta.write_sync(schema_op(SCHEMA))
        self._seq = self._rebuild()

    # -- start-up -----------------------------------------------------------------------------------

    def _rebuild(self) -> int:
        rows = self.meta.reader.execute(
            "SELECT c.hash, c.size, c.last_use, k.hash IS NOT NULL FROM cache_chunks c "
            "LEFT JOIN chunks k ON k.hash = c.hash ORDER BY c.last_use, c.hash").fetchall()
        gone: list[str] = []
        seq = 0
        for h, size, use, recorded in rows:
            seq = max(seq, int(use))
            if recorded and self.chunks.has(h):
                self.policy.add(h, int(size))
            else:
                gone.append(h)
        if gone:
            self.meta.write_sync(_forget_op(gone))
        if self.policy.used > self.policy.quota:
            evicted = self._evict(self.policy.evictions(0))
            if evicted:  # at start-up nobody reports yet: the holder service reads the table afterwards
                self.meta.write_sync(_forget_op(evicted))
        return seq + 1

    # -- what is cached -------------------------------------------------------------------------------

    @property
    def quota(self) -> int | None:
        return self.policy.quota if self.limited else None

    @property
    def used(self) -> int:
        return self.policy.used

    def set_quota(self, quota: int | None) -> None:
        """Change the quota (None: unlimited); evicts down to a lower one at once."""
        self.limited = quota is not None
        self.policy.quota = UNLIMITED if quota is None else quota
        if self.limited:
            self._make_room(0)

    def __contains__(self, h: str) -> bool:
        return h in self.policy

    def __len__(self) -> int:
        return len(self.policy)

    def stats(self) -> dict[str, Any]:
        return {"quota_bytes": self.quota, "used_bytes": self.used, "chunks": len(self.policy),
                "pinned_bytes": self.policy.pinned_bytes, "evictions": self.evictions,
                "evicted_bytes": self.evicted_bytes, "uncached": self.uncached,
                "uncached_bytes": self.uncached_bytes, "spared_last_copies": self.spared}

    # -- use ------------------------------------------------------------------------------------------

    def touch(self, h: str) -> None:
        """A cached copy was read or served: it becomes the most recently used."""
        if h not in self.policy:
            return
        self.policy.touch(h)
        self._used(h)

    def _used(self, h: str) -> None:
        """Note ``h``'s new place at the recent end of the order, to be written with the next flush."""
        self._dirty[h] = self._seq
        self._seq += 1
        if len(self._dirty) >= FLUSH_EVERY or self.clock() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> Future[None] | None:
        """Write the last uses gathered since the last flush (one transaction)."""
        self._last_flush = self.clock()
        if not self._dirty:
            return None
        uses = [(use, h) for h, use in self._dirty.items()]
        self._dirty.clear()
        fut = self.meta.submit(_uses_op(uses))
        fut.add_done_callback(_logged)
        return fut

    def acquire(self, hashes: Iterable[str]) -> list[str]:
        """Pin the cached copies among ``hashes`` while they are in use (refcounted); returns the pinned
        ones, to ``release`` later (kept chunks need no pin: they are never evicted)."""
        held = [h for h in hashes if h in self.policy]
        for h in held:
            if self._use[h] == 0:
                self.policy.pin(h, IN_USE)
            self._use[h] += 1
        return held

    def release(self, hashes: Iterable[str]) -> None:
        for h in hashes:
            n = self._use[h] - 1
            if n > 0:
                self._use[h] = n
                continue
            self._use.pop(h, None)
            self.policy.unpin(h, IN_USE)
            if h in self.policy and not self.policy.is_pinned(h):  # back in the order, as the most recent
                self._used(h)

    @contextmanager
    def using(self, hashes: Iterable[str]) -> Iterator[None]:
        held = self.acquire(hashes)
        try:
            yield
        finally:
            self.release(held)

    async def keep(self, hashes: Iterable[str], executor: Executor | None = None) -> list[str]:
        """These chunks are now kept here (written, committed, or a ``copies`` replica): never evicted.

        The cached copies among them leave the cache at once (before the first await), their
        metadata change is queued before the caller's own write (so it is durable no later), and
        their files and directories are fsynced (a cached copy was written without): a kept chunk is
        as durable as one written here. Returns the chunks that were cached copies."""
        kept = [h for h in dict.fromkeys(hashes) if h in self.policy and h not in self._storing]
        storing = [h for h in dict.fromkeys(hashes) if h in self._storing]
        for h in kept + storing:
            self.policy.remove(h)  # a copy being stored is recorded as kept when its write ends
            self._dirty.pop(h, None)
            if self._spared.pop(h, None) is not None:
                self.policy.unpin(h, LAST_COPY)
        if kept:
            self.meta.submit(_keep_op(kept)).add_done_callback(_logged)
            await asyncio.get_running_loop().run_in_executor(executor, self._sync, kept)
        return kept

    def _sync(self, hashes: list[str]) -> None:
        self.chunks.sync_files(hashes)
        self.chunks.sync_dirs(hashes)

    # -- storing a fetched chunk ------------------------------------------------------------------------

    async def store_fetched(self, h: str, data: bytes, executor: Executor | None = None, *,
                            direct: bool = False) -> bool:
        """Keep a fetched, verified chunk as a cached copy, evicting LRU copies to make room.
        Returns False when it does not fit (everything left is pinned): the caller serves the bytes
        without keeping them. Raises what the disk raises (StorageFull). ``direct`` writes the file
        with O_DIRECT, past the page cache (``ChunkStore.write``)."""
        size = len(data)
        if h in self._storing:  # another fetch is writing it
            return True
        if self.chunks.has(h):  # a cached copy (now used again) or a kept chunk
            self.touch(h)
            return True
        if h in self.policy:  # recorded, but its file is gone (quarantined as corrupt, or lost): again
            self.policy.remove(h)
        fits = not self.limited or (self._make_room(size) if self.last_copy is None
                                    else await self._make_room_checked(size))
        if not fits:
            self.uncached += 1
            self.uncached_bytes += size
            return False
        self.policy.add(h, size)
        self.policy.pin(h, STORING)
        self._storing.add(h)
        created = False
        try:
            loop = asyncio.get_running_loop()
            created = await loop.run_in_executor(executor, self._write, h, data, direct)
            use = self._seq
            self._seq += 1
            if h in self.policy:
                # Not awaited, and not fsynced on its own: the copy is servable once its file is
                # written (a reader waiting for the record's fsync was capped at the metadata commit
                # rate). A crash before the record is durable leaves a file without a row, which
                # counts as kept.
                self.recording.add(h)
                self.meta.submit(_cached_op(h, size, use), durable=False).add_done_callback(
                    lambda fut, h=h: (self.recording.discard(h), _logged(fut)))
            else:  # kept while it was being written: as durable as a chunk written here
                await loop.run_in_executor(executor, self._sync, [h])
                await asyncio.shield(asyncio.wrap_future(self.meta.submit(_kept_row_op(h, size))))
        except BaseException:
            if h in self.policy:
                self.policy.remove(h)
                if created:
                    with self.lock:
                        if not self.busy(h):
                            self.chunks.remove(h)
            raise
        finally:
            self._storing.discard(h)
            self.policy.unpin(h, STORING)
            if h in self.policy and not self.policy.is_pinned(h):
                self._used(h)
        return True

    def _write(self, h: str, data: bytes, direct: bool = False) -> bool:
        # No fsync: a torn cached copy fails its hash when read and is fetched again.
        return self.chunks.write(h, data, fsync=False, direct=direct)

    def _make_room(self, incoming: int) -> bool:
        """Evict LRU copies until ``incoming`` bytes fit; False if they cannot."""
        if self.policy.over_quota(incoming):
            return False
        for _ in range(4):  # a victim an upload is writing is skipped (moved to the back): try again
            victims = self.policy.evictions(incoming)
            if not victims:
                return True
            evicted = self._evict(victims)
            if evicted:
                self.meta.submit(_forget_op(evicted)).add_done_callback(_logged)
                if self.on_removed is not None:
                    self.on_removed(evicted)
        return self.policy.used + incoming <= self.policy.quota

    async def _make_room_checked(self, incoming: int) -> bool:
        """``_make_room``, evicting only copies the mesh confirmed another live host holds: a cached
        copy that is the last one the mesh knows of (its writer's and replicas' disks lost) is pinned
        instead. The mesh is asked about a batch of victims at a time, not one chunk per fetch."""
        now = self.clock()
        # answers older than VERIFIED_FOR count for nothing: drop them (chunks kept or removed since too)
        self._verified = {h: t for h, t in self._verified.items() if t > now - VERIFIED_FOR}
        for h, when in list(self._spared.items()):
            if when <= now - RECHECK_SPARED:  # maybe copied elsewhere since: back in line, asked again
                del self._spared[h]
                self.policy.unpin(h, LAST_COPY)
        for _ in range(3):
            if self.policy.over_quota(incoming):
                return False
            if not self.policy.evictions(incoming):
                return True  # it fits as things are
            batch = incoming if self.policy.over_quota(incoming + self.batch) else incoming + self.batch
            victims = self.policy.evictions(batch)
            if not victims:
                return True
            now = self.clock()
            unchecked = [h for h in victims if self._verified.get(h, -VERIFIED_FOR) <= now - VERIFIED_FOR]
            if unchecked:
                assert self.last_copy is not None
                try:
                    last = await self.last_copy(unchecked)
                except Exception as exc:  # noqa: BLE001 -- cannot tell: keep them this time
                    log.debug("asking the mesh before an eviction failed: %s", exc)
                    continue
                now = self.clock()
                for h in unchecked:
                    if h in last:
                        if h in self.policy and not self.policy.is_pinned(h):
                            self.policy.pin(h, LAST_COPY)
                            self._spared[h] = now
                            self.spared += 1
                    else:
                        self._verified[h] = now
            if self._make_room(incoming):
                return True
        return False

    @property
    def batch(self) -> int:
        return min(EVICT_BATCH, self.policy.quota // 16)

    def _evict(self, victims: list[str]) -> list[str]:
        evicted: list[str] = []
        checked = self.last_copy is not None
        now = self.clock()
        with self.lock:
            for h in victims:
                if self.busy(h):  # an upload is writing this very chunk: it will be kept
                    self.policy.touch(h)
                    continue
                if checked and self._verified.pop(h, -VERIFIED_FOR) <= now - VERIFIED_FOR:
                    continue  # nobody confirmed another holder yet: _make_room_checked asks first
                size = self.policy.size_of(h) or 0
                self.policy.remove(h)
                self._dirty.pop(h, None)
                self.chunks.remove(h)
                evicted.append(h)
                self.evictions += 1
                self.evicted_bytes += size
        if evicted:
            log.debug("evicted %d cached chunk(s), %d bytes now cached", len(evicted), self.policy.used)
        return evicted

    def close(self) -> None:
        fut = self.flush()
        if fut is not None:
            try:
                fut.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 -- the LRU order is advisory; closing goes on
                log.warning("writing the cache's last uses failed: %s", exc)


def _kept_row_op(h: str, size: int) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR IGNORE INTO chunks(hash, size) VALUES (?, ?)", (h, size))

    return op
