"""Metadata in SQLite (WAL): versions, latest pointers, local chunks.

All writes go through one writer thread that commits whatever is queued as one transaction
(group commit): many concurrent PUTs pay for one fsync together. Each queued operation runs in
its own savepoint, so one failing operation does not undo its neighbours. Reads use a separate
connection per thread and see the last committed state (WAL snapshot).

An operation submitted with ``durable=False`` (a record that is only a local copy of something
durable elsewhere, such as a version a mesh's masters issued) does not wait for an fsync of its
own: a batch of only such operations commits with ``synchronous=NORMAL`` (visible at once, made
durable by the next fsync of the WAL, which is written in order).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from mesh.core.manifest import Manifest

T = TypeVar("T")
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    size INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    issued_at REAL NOT NULL,
    manifest BLOB NOT NULL,
    PRIMARY KEY (key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value BLOB
) WITHOUT ROWID;
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def schema_op(statements: Iterable[str]) -> Callable[[sqlite3.Connection], None]:
    """An operation creating a module's own tables (``CREATE ... IF NOT EXISTS`` statements)."""
    def op(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return op


Waiter = Future[Any] | asyncio.Future[Any]  # submit's (any thread) or write's (an event loop's)
Operation = Callable[[sqlite3.Connection], Any]


def _claim(fut: Waiter) -> bool:
    """False if the caller gave up while queued (its operation is not run). A claimed concurrent
    future can no longer be cancelled; an event loop's can, and then its result is dropped."""
    if isinstance(fut, Future):
        return fut.set_running_or_notify_cancel()
    return not fut.cancelled()


def _resolve(fut: Waiter, ok: bool, value: Any) -> None:
    if fut.done():  # an event loop's future whose caller was cancelled meanwhile
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _settle(outcomes: list[tuple[Waiter, bool, Any]]) -> None:
    """Set each future's result or exception: concurrent ones here, each event loop's in one call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, bool, Any]]] = {}
    for fut, ok, value in outcomes:
        if isinstance(fut, Future):
            _resolve(fut, ok, value)
        else:
            by_loop.setdefault(fut.get_loop(), []).append((fut, ok, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, items)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            pass


def _settle_on_loop(items: list[tuple[Waiter, bool, Any]]) -> None:
    for fut, ok, value in items:
        _resolve(fut, ok, value)


class MetaStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _connect(path)
        self._writer.executescript(SCHEMA)
        self._local = threading.local()
        # SimpleQueue: a put is one C call, not a Python lock and condition (every commit queues two)
        self._queue: queue.SimpleQueue[tuple[Operation, Waiter, bool] | None] = (
            queue.SimpleQueue()
        )
        self._synchronous = "FULL"
        self._thread = threading.Thread(target=self._run, name="meta-writer", daemon=True)
        self._thread.start()

    # -- writes -----------------------------------------------------------------------------------
    def submit(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> Future[T]:
        """Queue ``op`` for the next group commit; the future is done once it is committed (and,
        unless ``durable`` is False, fsynced)."""
        fut: Future[T] = Future()
        self._queue.put((op, fut, durable))
        return fut

    async def write(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """``submit`` for the event loop: the writer thread settles a whole batch's futures with one
        call into the loop, instead of one concurrent future, wrapper and wake-up per operation."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((op, fut, durable))
        return await fut

    def write_sync(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return self.submit(op).result()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Operation, Waiter, bool]]) -> None:
        # A caller that was cancelled while queued has no operation to run. A claimed concurrent
        # future can no longer be cancelled, and an event loop's is settled on its loop only if
        # still pending, so setting results cannot fail and kill this thread.
        batch = [item for item in batch if _claim(item[1])]
        if not batch:
            return
        conn = self._writer
        synchronous = "FULL" if any(durable for _, _, durable in batch) else "NORMAL"
        if synchronous != self._synchronous:  # outside a transaction: SQLite ignores it inside one
            conn.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        results: list[tuple[Waiter, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((fut, True, op(conn)))
                    conn.execute("RELEASE op")
                except BaseException as exc:  # an operation's error is its caller's, not the batch's
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((fut, False, exc))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _settle([(fut, False, exc) for _, fut, _ in batch])
            return
        _settle(results)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._writer.close()

    # -- reads ------------------------------------------------------------------------------------
    @property
    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
        return conn

    def latest_version(self, key: str) -> int:
        row = self.reader.execute("SELECT version FROM latest WHERE key=?", (key,)).fetchone()
        return row[0] if row else 0

    def manifest(self, key: str, version: int) -> Manifest | None:
        row = self.reader.execute(
            "SELECT manifest FROM versions WHERE key=? AND version=?", (key, version)
        ).fetchone()
        return Manifest.decode(row[0]) if row else None

    def versions(self, key: str, limit: int, before: int | None = None) -> list[Manifest]:
        rows = self.reader.execute(
            "SELECT manifest FROM versions WHERE key=? AND version<? ORDER BY version DESC LIMIT ?",
            (key, before if before is not None else 1 << 62, limit),
        ).fetchall()
        return [Manifest.decode(r[0]) for r in rows]

    def list_keys(self, prefix: str, limit: int, after: str = "") -> list[tuple[str, int, int, str, float, str]]:
        """(key, latest version, size, content_hash, issued_at, kind) of keys starting with prefix."""
        rows = self.reader.execute(
            "SELECT l.key, l.version, v.size, v.content_hash, v.issued_at, v.kind FROM latest l "
            "JOIN versions v ON v.key = l.key AND v.version = l.version "
            "WHERE l.key >= ? AND l.key > ? ORDER BY l.key LIMIT ?",
            (prefix, after, limit * 4 + 16),
        ).fetchall()
        out = [r for r in rows if r[0].startswith(prefix)]
        return out[:limit]

    def has_chunks(self, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            q = f"SELECT hash FROM chunks WHERE hash IN ({','.join('?' * len(part))})"
            found.update(r[0] for r in self.reader.execute(q, part))
        return found

    def chunk_sizes(self, hashes: list[str]) -> dict[str, int]:
        """The recorded size of each of ``hashes`` held here (those not recorded are left out)."""
        found: dict[str, int] = {}
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            q = f"SELECT hash, size FROM chunks WHERE hash IN ({','.join('?' * len(part))})"
            found.update((h, int(n)) for h, n in self.reader.execute(q, part))
        return found

    def usage(self) -> tuple[int, int]:
        """(number of chunks, bytes) held locally."""
        n, total = self.reader.execute("SELECT count(*), coalesce(sum(size), 0) FROM chunks").fetchone()
        return int(n), int(total)

    def counts(self) -> tuple[int, int]:
        """(keys, versions)."""
        keys = self.reader.execute("SELECT count(*) FROM latest").fetchone()[0]
        versions = self.reader.execute("SELECT count(*) FROM versions").fetchone()[0]
        return int(keys), int(versions)


# -- write operations (run inside the writer's transaction) ---------------------------------------
def record_chunks(chunks: list[tuple[str, int]]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO chunks(hash, size) VALUES (?, ?)", chunks)

    return op


def store_version(manifest: Manifest) -> Callable[[sqlite3.Connection], None]:
    """Insert an issued version; refuses to overwrite ``(key, version)`` with other content."""

    def op(conn: sqlite3.Connection) -> None:
        blob = manifest.encode()
        row = conn.execute(
            "SELECT manifest FROM versions WHERE key=? AND version=?", (manifest.key, manifest.version)
        ).fetchone()
        if row is not None:
            if row[0] != blob:
                raise AssertionError(f"{manifest.key}@{manifest.version} already issued with other content")
            return
        conn.execute(
            "INSERT INTO versions(key, version, parent, size, content_hash, kind, issued_at, manifest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (manifest.key, manifest.version, manifest.parent, manifest.size, manifest.content_hash,
             manifest.kind, manifest.issued_at, blob),
        )
        conn.execute(
            "INSERT INTO latest(key, version) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET version=excluded.version WHERE excluded.version > latest.version",
            (manifest.key, manifest.version),
        )

    return op
