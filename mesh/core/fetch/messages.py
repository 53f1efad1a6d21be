"""Messages of the fetch layer: wire messages between a node and its cluster's master (WAN
coalescing), and the planner's inputs and effects (in-process, never on the wire).

Wire (``to_wire()`` -> dict with ``"t"``; ``message_from_wire(obj)`` raises ProtocolError)::

    WanClaim(chunk, tried)     node -> master   I miss ``chunk`` in the cluster; may I pull it over
                                                the WAN? (``tried``: cluster nodes that failed me).
                                                Re-sent by the owner to renew its lease.
    WanGrant(chunk)            master -> node   yes: you are the cluster's one WAN transfer
    WanWait(chunk)             master -> node   another node is pulling it; wait for InCluster
    InCluster(chunk, nodes)    master -> node   fetch it from these nodes of your cluster
    WanDone(chunk, ok)         node -> master   my WAN transfer ended: I hold it now (ok) or I failed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.core.costs import Estimate, Host
from mesh.core.holders import check, is_chunk_hash
from mesh.core.manifest import ChunkRef
from mesh.errors import ProtocolError

MAX_TRIED = 16  # nodes listed in one WanClaim
MAX_IN_CLUSTER = 16  # nodes listed in one InCluster
NODE_ID_HEX = 40
R = "malformed_fetch"


def _node_list(obj: Any, limit: int) -> tuple[str, ...]:
    check(isinstance(obj, list | tuple) and len(obj) <= limit, R, "node list")
    check(all(isinstance(n, str) and 0 < len(n) <= NODE_ID_HEX * 2 for n in obj), R, "node id")
    return tuple(obj)


def _chunk(value: Any) -> str:
    check(is_chunk_hash(value), R, "chunk hash")
    return value


@dataclass(frozen=True)
class WanClaim:
    chunk: str
    tried: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _chunk(self.chunk)
        _node_list(self.tried, MAX_TRIED)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "wan_claim", "c": self.chunk, "x": list(self.tried)}


@dataclass(frozen=True)
class WanGrant:
    chunk: str

    def __post_init__(self) -> None:
        _chunk(self.chunk)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "wan_grant", "c": self.chunk}


@dataclass(frozen=True)
class WanWait:
    chunk: str

    def __post_init__(self) -> None:
        _chunk(self.chunk)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "wan_wait", "c": self.chunk}


@dataclass(frozen=True)
class InCluster:
    chunk: str
    nodes: tuple[str, ...]

    def __post_init__(self) -> None:
        _chunk(self.chunk)
        _node_list(self.nodes, MAX_IN_CLUSTER)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "in_cluster", "c": self.chunk, "n": list(self.nodes)}


@dataclass(frozen=True)
class WanDone:
    chunk: str
    ok: bool

    def __post_init__(self) -> None:
        _chunk(self.chunk)
        check(isinstance(self.ok, bool), R, "ok")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "wan_done", "c": self.chunk, "ok": self.ok}


CoalesceMessage = WanClaim | WanGrant | WanWait | InCluster | WanDone


def message_from_wire(obj: Any) -> CoalesceMessage:
    check(isinstance(obj, dict), R, "not a map")
    try:
        t = obj["t"]
        if t == "wan_claim":
            return WanClaim(obj["c"], _node_list(obj["x"], MAX_TRIED))
        if t == "wan_grant":
            return WanGrant(obj["c"])
        if t == "wan_wait":
            return WanWait(obj["c"])
        if t == "in_cluster":
            return InCluster(obj["c"], _node_list(obj["n"], MAX_IN_CLUSTER))
        if t == "wan_done":
            return WanDone(obj["c"], obj["ok"])
    except (KeyError, TypeError) as exc:
        raise ProtocolError(R, str(exc)) from exc
    raise ProtocolError(R, f"unknown type {str(t)[:20]!r}")


@dataclass(frozen=True)
class Send:
    """A coalescer effect: send ``message`` to node ``dest`` of the cluster."""

    dest: str
    message: CoalesceMessage


# --- the planner's inputs (results of its requests, reported by the runtime) ---

@dataclass(frozen=True)
class ChunkOk:
    """The bytes a holder sent. ``digest`` is their BLAKE3 hex digest when the runtime already hashed
    them off the event loop (its transfer threads do); the planner still compares it with the chunk's
    hash, and computes it itself when it is None."""

    request_id: int
    data: bytes
    digest: str | None = None


@dataclass(frozen=True)
class ChunkError:
    """The holder could not serve: ``missing`` (404), ``refused``, ``error`` (connection, 5xx)."""

    request_id: int
    reason: str


# --- the planner's effects, in the order the runtime must carry them out ---

@dataclass(frozen=True)
class Request:
    """Fetch ``ref`` from ``estimate.holder`` (GET the chunk); answer with ChunkOk/ChunkError by ``deadline``."""

    request_id: int
    ref: ChunkRef
    estimate: Estimate
    deadline: float

    @property
    def holder(self) -> Host:
        return self.estimate.holder


@dataclass(frozen=True)
class Cancel:
    """Abort request ``request_id`` (it timed out or its holder died); a late answer is ignored."""

    request_id: int


@dataclass(frozen=True)
class ToMaster:
    """Send ``message`` (WanClaim or WanDone) to this cluster's master."""

    message: WanClaim | WanDone


@dataclass(frozen=True)
class NeedHolders:
    """Every known holder of ``chunk`` failed or none is known: look up more (own master, the key's
    home for the clusters, their masters), then call ``add_holders`` or ``no_more_holders``."""

    chunk: str


@dataclass(frozen=True)
class BecameHolder:
    """Verified bytes: store them, then tell the HolderReporter. Done before any later effect."""

    ref: ChunkRef
    data: bytes
    via_wan: bool


@dataclass(frozen=True)
class Deliver:
    """The next chunk of the file for the reader, verified, in file order."""

    index: int
    ref: ChunkRef
    data: bytes


@dataclass(frozen=True)
class HolderFault:
    """``holder`` failed to serve ``chunk`` (``missing``, ``corrupt``, ``timeout``, ...): count it; on
    ``missing`` the master may drop the record (``HolderIndex.drop``)."""

    holder: Host
    chunk: str
    reason: str


@dataclass(frozen=True)
class FetchFailed:
    """No holder could deliver chunk ``index``: the read fails (ChunkMissing); the planner is finished."""

    index: int
    ref: ChunkRef
    reason: str


Effect = Request | Cancel | ToMaster | NeedHolders | BecameHolder | Deliver | HolderFault | FetchFailed

__all__ = ["BecameHolder", "Cancel", "ChunkError", "ChunkOk", "CoalesceMessage", "Deliver", "Effect", "FetchFailed",
           "HolderFault", "InCluster", "NeedHolders", "Request", "Send", "ToMaster", "WanClaim", "WanDone",
           "WanGrant", "WanWait", "message_from_wire"]
