"""Durable records and the effects an Issuer asks its runtime to carry out.

The replica's durable state is three kinds of plain records, each an upsert by its primary key,
so a runtime can store a whole ``Persist`` batch in one SQLite transaction::

    CREATE TABLE issuance_promise (key TEXT PRIMARY KEY, epoch INT, round INT, node TEXT);
    CREATE TABLE issuance_accept  (key TEXT, version INT, epoch INT, round INT, node TEXT,
                                   manifest_hash TEXT, manifest BLOB, PRIMARY KEY (key, version));
    CREATE TABLE issuance_round   (id INT PRIMARY KEY CHECK (id = 0), round INT);

On restart, hand every stored record back: ``Issuer(..., records=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.issuance.messages import Ballot, Entry, Message
from mesh.core.manifest import Manifest
from mesh.errors import EltonError


@dataclass(frozen=True)
class PromiseRecord:
    """Upsert by ``key``: this replica ignores ballots below ``ballot`` for the key."""

    key: str
    ballot: Ballot


@dataclass(frozen=True)
class AcceptRecord:
    """Upsert by ``(key, entry.version)``: this replica accepted ``entry``."""

    key: str
    entry: Entry


@dataclass(frozen=True)
class RoundRecord:
    """Upsert (one row): the highest ballot round this master has used as a proposer."""

    round: int


Record = PromiseRecord | AcceptRecord | RoundRecord


@dataclass(frozen=True)
class Persist:
    """Write these records durably (one transaction) before carrying out any later effect."""

    records: tuple[Record, ...]


@dataclass(frozen=True)
class Send:
    """Send ``message`` to master ``dest`` (a node id)."""

    dest: str
    message: Message


@dataclass(frozen=True)
class Done:
    """A commit submitted here finished: ``manifest`` when issued, ``error`` when not."""

    request_id: str
    key: str
    manifest: Manifest | None = None
    error: EltonError | None = None


Effect = Persist | Send | Done
