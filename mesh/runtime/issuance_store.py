"""SQLite persistence of the issuance core's records and of pending (queued) commits.

The tables live in the node's ``meta.sqlite`` next to the versions, so a ``Persist`` batch rides
the MetaStore's group commit: many accepts from many homes share one fsync. Tables are created
idempotently (``CREATE TABLE IF NOT EXISTS``) with plain ``execute`` calls, since the writer
runs every operation inside its own transaction (``executescript`` would commit it).

On restart only what the core needs is loaded: the round, every promise, and per key the
accepted slot of the highest version (older accepts stay on disk as the replica's history).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mesh.core.codec import MAX_STREAM_MESSAGE, pack, unpack
from mesh.core.issuance import AcceptRecord, Ballot, Entry, PromiseRecord, Record, RoundRecord
from mesh.core.issuance.messages import draft_from_wire, draft_to_wire
from mesh.core.manifest import Draft
from mesh.store.meta import MetaStore, schema_op

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS issuance_promise (key TEXT PRIMARY KEY, epoch INTEGER NOT NULL, "
    "round INTEGER NOT NULL, node TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS issuance_accept (key TEXT NOT NULL, version INTEGER NOT NULL, "
    "epoch INTEGER NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL, manifest_hash TEXT NOT NULL, "
    "manifest BLOB NOT NULL, PRIMARY KEY (key, version)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS issuance_round (id INTEGER PRIMARY KEY CHECK (id = 0), round INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS issuance_pending (id TEXT PRIMARY KEY, key TEXT NOT NULL, "
    "draft BLOB NOT NULL, expected_parent INTEGER, created_at REAL NOT NULL, attempts INTEGER NOT NULL, "
    "state TEXT NOT NULL, last_error TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS issuance_pending_created ON issuance_pending (created_at)",
)


def _save_op(records: tuple[Record, ...]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        for rec in records:
            if isinstance(rec, PromiseRecord):
                b = rec.ballot
                conn.execute(
                    "INSERT INTO issuance_promise(key, epoch, round, node) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET epoch=excluded.epoch, round=excluded.round, node=excluded.node",
                    (rec.key, b.epoch, b.round, b.node))
            elif isinstance(rec, AcceptRecord):
                e = rec.entry
                conn.execute(
                    "INSERT INTO issuance_accept(key, version, epoch, round, node, manifest_hash, manifest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key, version) DO UPDATE SET epoch=excluded.epoch, "
                    "round=excluded.round, node=excluded.node, manifest_hash=excluded.manifest_hash, "
                    "manifest=excluded.manifest",
                    (rec.key, e.version, e.ballot.epoch, e.ballot.round, e.ballot.node, e.manifest_hash,
                     e.manifest))
            elif isinstance(rec, RoundRecord):
                conn.execute("INSERT INTO issuance_round(id, round) VALUES (0, ?) "
                             "ON CONFLICT(id) DO UPDATE SET round=max(round, excluded.round)", (rec.round,))
            else:  # pragma: no cover - the core makes only these three
                raise TypeError(f"not an issuance record: {rec!r}")

    return op


class IssuanceStore:
    """The durable state of one master's Issuer, in the node's meta.sqlite."""

    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    async def create(self) -> None:
        await self.meta.write(schema_op(SCHEMA))

    async def save(self, records: tuple[Record, ...]) -> None:
        """Upsert one ``Persist`` batch; durable when this returns (the writer's group commit)."""
        await self.meta.write(_save_op(records))

    def load(self) -> list[Record]:
        """Every record the core needs to restart: the round, promises, the top accept per key."""
        conn = self.meta.reader
        records: list[Record] = []
        row = conn.execute("SELECT round FROM issuance_round WHERE id = 0").fetchone()
        if row is not None:
            records.append(RoundRecord(int(row[0])))
        for key, epoch, rnd, node in conn.execute("SELECT key, epoch, round, node FROM issuance_promise"):
            records.append(PromiseRecord(key, Ballot(epoch, rnd, node)))
        for key, version, epoch, rnd, node, mhash, manifest in conn.execute(
                "SELECT a.key, a.version, a.epoch, a.round, a.node, a.manifest_hash, a.manifest "
                "FROM issuance_accept a JOIN (SELECT key, max(version) AS v FROM issuance_accept GROUP BY key) m "
                "ON a.key = m.key AND a.version = m.v"):
            records.append(AcceptRecord(key, Entry(version, Ballot(epoch, rnd, node), mhash, bytes(manifest))))
        return records

    def accepted(self, key: str) -> list[Entry]:
        """Every slot of ``key`` this replica accepted (its history, oldest first)."""
        rows = self.meta.reader.execute(
            "SELECT version, epoch, round, node, manifest_hash, manifest FROM issuance_accept WHERE key = ? "
            "ORDER BY version", (key,))
        return [Entry(v, Ballot(e, r, n), h, bytes(m)) for v, e, r, n, h, m in rows]

    def top_version(self, key: str) -> int:
        row = self.meta.reader.execute("SELECT max(version) FROM issuance_accept WHERE key = ?", (key,)).fetchone()
        return int(row[0] or 0)


# -- pending commits (elton put --queue) ----------------------------------------------------------

@dataclass(frozen=True)
class PendingCommit:
    """A draft stored while its key's replicas were unreachable; issued when they are back.

    ``state``: ``queued`` (retried), ``conflict`` (its expected parent was overtaken: kept, not
    retried, for the user to see), ``issued`` is never stored (the row is deleted then).
    """

    id: str
    key: str
    draft: Draft
    expected_parent: int | None
    created_at: float
    attempts: int
    state: str
    last_error: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "size": self.draft.size, "content_hash": self.draft.content_hash,
                "expected_parent": self.expected_parent, "created_at": self.created_at, "attempts": self.attempts,
                "state": self.state, "last_error": self.last_error}


def _row_to_pending(row: tuple[Any, ...]) -> PendingCommit:
    pid, key, blob, parent, created, attempts, state, err = row
    return PendingCommit(pid, key, draft_from_wire(unpack(bytes(blob), MAX_STREAM_MESSAGE)), parent, created,
                         attempts, state, err)


class PendingStore:
    """The ``issuance_pending`` table: add, list, update, remove."""

    def __init__(self, meta: MetaStore, clock: Callable[[], float] = time.time) -> None:
        self.meta = meta
        self.clock = clock

    async def create(self) -> None:
        await self.meta.write(schema_op(SCHEMA))

    async def add(self, pid: str, draft: Draft, expected_parent: int | None, error: str) -> PendingCommit:
        item = PendingCommit(pid, draft.key, draft, expected_parent, self.clock(), 1, "queued", error[:500])
        blob = pack(draft_to_wire(draft))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO issuance_pending(id, key, draft, expected_parent, created_at, attempts, state, "
                         "last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (pid, item.key, blob, expected_parent, item.created_at, 1, "queued", item.last_error))

        await self.meta.write(op)
        return item

    def list(self, limit: int = 1000, state: str | None = None) -> list[PendingCommit]:
        """Oldest first."""
        q = ("SELECT id, key, draft, expected_parent, created_at, attempts, state, last_error FROM issuance_pending "
             + ("WHERE state = ? " if state else "") + "ORDER BY created_at, id LIMIT ?")
        args: tuple[Any, ...] = (state, limit) if state else (limit,)
        return [_row_to_pending(r) for r in self.meta.reader.execute(q, args)]

    def count(self) -> int:
        return int(self.meta.reader.execute("SELECT count(*) FROM issuance_pending").fetchone()[0])

    async def update(self, pid: str, state: str, error: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE issuance_pending SET attempts = attempts + 1, state = ?, last_error = ? WHERE id = ?",
                         (state, error[:500], pid))

        await self.meta.write(op)

    async def remove(self, pids: Iterable[str]) -> None:
        ids = [(p,) for p in pids]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM issuance_pending WHERE id = ?", ids)

        await self.meta.write(op)
