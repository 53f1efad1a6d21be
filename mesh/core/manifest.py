"""Manifests: what ``(key, version)`` is, signed by the issuing master.

A manifest is immutable and self-verifying, so any master or node may cache it forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import blake3

from mesh.core.codec import pack, unpack
from mesh.core.identity import Identity, node_id_of, verify
from mesh.errors import ProtocolError

HASH_HEX_LEN = 64


def chunk_hash(data: bytes | memoryview) -> str:
    """The name of a chunk: its BLAKE3-256 hash in hex."""
    return blake3.blake3(data, max_threads=1).hexdigest()


@dataclass(frozen=True)
class ChunkRef:
    hash: str
    size: int


@dataclass(frozen=True)
class Draft:
    """What a writer proposes; the home turns it into a Manifest by issuing a version."""

    key: str
    size: int
    content_hash: str
    chunks: tuple[ChunkRef, ...]
    author: str
    kind: str = "file"  # "file" or "tree" (a volume version)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The signed description of one version; ``to_wire`` lists every field (a test checks it)."""

    key: str
    version: int
    parent: int  # 0 for the first version
    size: int
    content_hash: str
    chunks: tuple[ChunkRef, ...]
    author: str
    issued_at: float
    issuer_public_key: bytes
    kind: str = "file"
    meta: dict[str, Any] = field(default_factory=dict)
    signature: bytes = b""

    @property
    def issuer(self) -> str:
        return node_id_of(self.issuer_public_key)

    def _signed_part(self) -> bytes:
        d = self.to_wire()
        d.pop("signature")
        return pack(d)

    def signed(self, identity: Identity) -> Manifest:
        unsigned = self
        if self.issuer_public_key != identity.public_key or self.signature:  # issue() builds it unsigned
            unsigned = replace(self, issuer_public_key=identity.public_key, signature=b"")
        return replace(unsigned, signature=identity.sign(unsigned._signed_part()))

    def verify(self) -> Manifest:
        verify(self.issuer_public_key, self._signed_part(), self.signature)
        return self

    def to_wire(self) -> dict[str, Any]:
        # by hand, not dataclasses.asdict: that deep-copies every field and is on every commit's path
        return {
            "key": self.key, "version": self.version, "parent": self.parent, "size": self.size,
            "content_hash": self.content_hash, "chunks": [[c.hash, c.size] for c in self.chunks],
            "author": self.author, "issued_at": self.issued_at, "issuer_public_key": self.issuer_public_key,
            "kind": self.kind, "meta": dict(self.meta), "signature": self.signature,
        }

    def encode(self) -> bytes:
        return pack(self.to_wire())

    def to_json(self) -> dict[str, Any]:
        """The public JSON view (HTTP API, CLI)."""
        return {
            "key": self.key,
            "version": self.version,
            "parent": self.parent,
            "size": self.size,
            "content_hash": self.content_hash,
            "chunks": [{"hash": c.hash, "size": c.size} for c in self.chunks],
            "author": self.author,
            "issued_at": self.issued_at,
            "issuer": self.issuer,
            "kind": self.kind,
            "meta": self.meta,
        }

    @classmethod
    def from_wire(cls, d: Any) -> Manifest:
        try:
            chunks = tuple(ChunkRef(str(h), int(s)) for h, s in d["chunks"])
            m = cls(
                key=str(d["key"]),
                version=int(d["version"]),
                parent=int(d["parent"]),
                size=int(d["size"]),
                content_hash=str(d["content_hash"]),
                chunks=chunks,
                author=str(d["author"]),
                issued_at=float(d["issued_at"]),
                issuer_public_key=bytes(d["issuer_public_key"]),
                kind=str(d.get("kind", "file")),
                meta=dict(d.get("meta") or {}),
                signature=bytes(d["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("malformed_manifest", str(exc)) from exc
        if m.size != sum(c.size for c in chunks) or m.version < 1:
            raise ProtocolError("malformed_manifest", "size or version inconsistent")
        return m

    @classmethod
    def decode(cls, data: bytes, max_size: int = 64 * 1024 * 1024) -> Manifest:
        return cls.from_wire(unpack(data, max_size)).verify()


def issue(draft: Draft, version: int, parent: int, now: float, issuer: Identity) -> Manifest:
    """Turn a draft into the signed manifest of ``(draft.key, version)``."""
    return Manifest(
        key=draft.key,
        version=version,
        parent=parent,
        size=draft.size,
        content_hash=draft.content_hash,
        chunks=draft.chunks,
        author=draft.author,
        issued_at=now,
        issuer_public_key=issuer.public_key,
        kind=draft.kind,
        meta=dict(draft.meta),
    ).signed(issuer)
