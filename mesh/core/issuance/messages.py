"""Messages of the issuance protocol: frozen dataclasses, validated when built.

``to_wire()`` gives plain msgpack-able values (a dict with ``"t"`` naming the type);
``message_from_wire(obj)`` rebuilds one and raises ProtocolError for anything malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import blake3

from mesh.core.codec import MAX_STREAM_MESSAGE
from mesh.core.keys import validate_key
from mesh.core.manifest import ChunkRef, Draft
from mesh.errors import InvalidKey, ProtocolError

MAX_MANIFEST_BYTES = MAX_STREAM_MESSAGE
MAX_REQUEST_ID = 128
MAX_ERROR_TEXT = 1024
MAX_HOPS = 8
NODE_ID_HEX = 40


def manifest_hash(manifest_bytes: bytes) -> str:
    """The hash replicas store and compare: BLAKE3 of the encoded, signed manifest."""
    return blake3.blake3(manifest_bytes).hexdigest()


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError("malformed_issuance", what)


def _check_node(node: str) -> None:
    _check(isinstance(node, str) and len(node) == NODE_ID_HEX, "bad node id")
    try:
        int(node, 16)
    except ValueError as exc:
        raise ProtocolError("malformed_issuance", "bad node id") from exc


def _check_key(key: str) -> None:
    try:
        validate_key(key)
    except InvalidKey as exc:
        raise ProtocolError("malformed_issuance", exc.detail) from exc


def _nat(value: Any, what: str, low: int = 0) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= low, what)
    return value


@dataclass(frozen=True, order=True)
class Ballot:
    """Orders proposals for a key: roster epoch first (fences homes of older rosters), then round."""

    epoch: int
    round: int
    node: str

    def __post_init__(self) -> None:
        _nat(self.epoch, "ballot epoch")
        _nat(self.round, "ballot round")
        _check_node(self.node)

    def to_wire(self) -> list[Any]:
        return [self.epoch, self.round, self.node]

    @classmethod
    def from_wire(cls, obj: Any) -> Ballot:
        _check(isinstance(obj, list) and len(obj) == 3, "ballot")
        return cls(obj[0], obj[1], obj[2])


@dataclass(frozen=True)
class Entry:
    """One accepted slot: ``(key's) version`` proposed under ``ballot`` with this manifest."""

    version: int
    ballot: Ballot
    manifest_hash: str
    manifest: bytes = field(repr=False)
    # the commit this slot answers: a home that re-proposes the slot under a new ballot answers that
    # commit with it, instead of issuing the same draft again under the next version
    request_id: str = ""

    def __post_init__(self) -> None:
        _nat(self.version, "entry version", 1)
        _check(isinstance(self.request_id, str) and len(self.request_id) <= 256, "entry request id")
        _check(isinstance(self.manifest, bytes) and 0 < len(self.manifest) <= MAX_MANIFEST_BYTES,
               "manifest size")
        _check(self.manifest_hash == manifest_hash(self.manifest), "manifest hash mismatch")

    def to_wire(self) -> list[Any]:
        return [self.version, self.ballot.to_wire(), self.manifest_hash, self.manifest, self.request_id]

    @classmethod
    def from_wire(cls, obj: Any) -> Entry:
        _check(isinstance(obj, list) and len(obj) in (4, 5), "entry")
        return cls(obj[0], Ballot.from_wire(obj[1]), obj[2], obj[3], obj[4] if len(obj) == 5 else "")


def draft_to_wire(d: Draft) -> dict[str, Any]:
    return {"key": d.key, "size": d.size, "content_hash": d.content_hash,
            "chunks": [[c.hash, c.size] for c in d.chunks], "author": d.author, "kind": d.kind,
            "meta": dict(d.meta)}


def draft_from_wire(obj: Any) -> Draft:
    try:
        d = Draft(key=str(obj["key"]), size=_nat(obj["size"], "size"), content_hash=str(obj["content_hash"]),
                  chunks=tuple(ChunkRef(str(h), _nat(s, "chunk size")) for h, s in obj["chunks"]),
                  author=str(obj["author"]), kind=str(obj["kind"]), meta=dict(obj["meta"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("malformed_issuance", f"draft: {exc}") from exc
    _check_key(d.key)
    _check(d.size == sum(c.size for c in d.chunks), "draft size is not the sum of its chunks")
    return d


@dataclass(frozen=True)
class Commit:
    """Origin master -> home: issue the next version of ``draft.key`` (forwarded at most MAX_HOPS)."""

    request_id: str
    origin: str
    draft: Draft
    expected_parent: int | None
    timeout: float
    hops: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.request_id, str) and 0 < len(self.request_id) <= MAX_REQUEST_ID, "request id")
        _check_node(self.origin)
        _check_key(self.draft.key)
        if self.expected_parent is not None:
            _nat(self.expected_parent, "expected parent")
        _check(isinstance(self.timeout, float | int) and 0 < self.timeout <= 3600, "timeout")
        _check(0 <= _nat(self.hops, "hops") <= MAX_HOPS, "hops")

    @property
    def key(self) -> str:
        return self.draft.key


@dataclass(frozen=True)
class CommitReply:
    """Home -> origin: the signed manifest, or an error code and message (then manifest is empty)."""

    request_id: str
    key: str
    manifest: bytes = b""
    error_code: str = ""
    error_message: str = ""

    def __post_init__(self) -> None:
        _check(isinstance(self.request_id, str) and 0 < len(self.request_id) <= MAX_REQUEST_ID, "request id")
        _check_key(self.key)
        _check(isinstance(self.manifest, bytes) and len(self.manifest) <= MAX_MANIFEST_BYTES, "manifest")
        _check(bool(self.manifest) != bool(self.error_code), "a reply is a manifest or an error")
        _check(len(self.error_code) <= 64 and len(self.error_message) <= MAX_ERROR_TEXT, "error text")


@dataclass(frozen=True)
class Prepare:
    """Would-be home -> replicas: promise to ignore ballots below ``ballot`` for ``key``."""

    key: str
    ballot: Ballot

    def __post_init__(self) -> None:
        _check_key(self.key)


@dataclass(frozen=True)
class Promise:
    """Replica -> would-be home: promised; ``top`` is the replica's highest-version accepted slot."""

    key: str
    ballot: Ballot
    top: Entry | None

    def __post_init__(self) -> None:
        _check_key(self.key)


@dataclass(frozen=True)
class Accept:
    """Home -> replicas: store ``entry`` durably under ``entry.ballot``."""

    key: str
    entry: Entry

    def __post_init__(self) -> None:
        _check_key(self.key)

    @property
    def ballot(self) -> Ballot:
        return self.entry.ballot


@dataclass(frozen=True)
class Accepted:
    """Replica -> home: ``version`` is durable here under ``ballot``."""

    key: str
    ballot: Ballot
    version: int

    def __post_init__(self) -> None:
        _check_key(self.key)
        _nat(self.version, "version", 1)


@dataclass(frozen=True)
class Nack:
    """Replica -> home: ``ballot`` is refused, ``promised`` is higher (the home is fenced)."""

    key: str
    ballot: Ballot
    promised: Ballot

    def __post_init__(self) -> None:
        _check_key(self.key)


@dataclass(frozen=True)
class Handoff:
    """Old replica -> new home after a roster change: take over ``key`` (read its counter)."""

    key: str
    epoch: int

    def __post_init__(self) -> None:
        _check_key(self.key)
        _nat(self.epoch, "epoch")


@dataclass(frozen=True)
class HandoffDone:
    """New home -> old replica: ``key`` is settled on the replica set of roster ``epoch``."""

    key: str
    epoch: int

    def __post_init__(self) -> None:
        _check_key(self.key)
        _nat(self.epoch, "epoch")


Message = Commit | CommitReply | Prepare | Promise | Accept | Accepted | Nack | Handoff | HandoffDone


def message_to_wire(msg: Message) -> dict[str, Any]:
    """Plain values for msgpack: ``{"t": type name, ...fields}``."""
    match msg:
        case Commit():
            return {"t": "commit", "rid": msg.request_id, "origin": msg.origin, "draft": draft_to_wire(msg.draft),
                    "parent": msg.expected_parent, "timeout": float(msg.timeout), "hops": msg.hops}
        case CommitReply():
            return {"t": "reply", "rid": msg.request_id, "key": msg.key, "manifest": msg.manifest,
                    "code": msg.error_code, "message": msg.error_message}
        case Prepare():
            return {"t": "prepare", "key": msg.key, "ballot": msg.ballot.to_wire()}
        case Promise():
            return {"t": "promise", "key": msg.key, "ballot": msg.ballot.to_wire(),
                    "top": msg.top.to_wire() if msg.top else None}
        case Accept():
            return {"t": "accept", "key": msg.key, "entry": msg.entry.to_wire()}
        case Accepted():
            return {"t": "accepted", "key": msg.key, "ballot": msg.ballot.to_wire(), "version": msg.version}
        case Nack():
            return {"t": "nack", "key": msg.key, "ballot": msg.ballot.to_wire(), "promised": msg.promised.to_wire()}
        case Handoff():
            return {"t": "handoff", "key": msg.key, "epoch": msg.epoch}
        case HandoffDone():
            return {"t": "handoff_done", "key": msg.key, "epoch": msg.epoch}
    raise TypeError(f"not an issuance message: {msg!r}")


def message_from_wire(obj: Any) -> Message:
    """Rebuild a message from plain values; ProtocolError names what is wrong."""
    if not isinstance(obj, dict):
        raise ProtocolError("malformed_issuance", "not a map")
    try:
        match obj.get("t"):
            case "commit":
                return Commit(obj["rid"], obj["origin"], draft_from_wire(obj["draft"]), obj["parent"],
                              obj["timeout"], obj["hops"])
            case "reply":
                return CommitReply(obj["rid"], obj["key"], obj["manifest"], obj["code"], obj["message"])
            case "prepare":
                return Prepare(obj["key"], Ballot.from_wire(obj["ballot"]))
            case "promise":
                top = obj["top"]
                return Promise(obj["key"], Ballot.from_wire(obj["ballot"]),
                               None if top is None else Entry.from_wire(top))
            case "accept":
                return Accept(obj["key"], Entry.from_wire(obj["entry"]))
            case "accepted":
                return Accepted(obj["key"], Ballot.from_wire(obj["ballot"]), obj["version"])
            case "nack":
                return Nack(obj["key"], Ballot.from_wire(obj["ballot"]), Ballot.from_wire(obj["promised"]))
            case "handoff":
                return Handoff(obj["key"], obj["epoch"])
            case "handoff_done":
                return HandoffDone(obj["key"], obj["epoch"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError("malformed_issuance", f"{type(exc).__name__}: {exc}") from exc
    raise ProtocolError("malformed_issuance", f"unknown type {str(obj.get('t'))[:20]!r}")
