"""Placement: from a key to the ordered list of masters that hold its version counter.

The first master of the list is the key's *home* (it issues versions); the next ``r - 1`` are
its replicas. Placement is a pure function of the key and a master set, so every master
computes the same list without asking anyone.

Why a ring with virtual nodes and not the Kademlia XOR metric
--------------------------------------------------------------
Under XOR the master closest to a key is the one sharing the longest id prefix with it, so a
master's share of the keys is the size of its leaf in the binary trie of ids: with 100
random ids some masters own two to four times their fair share, and the one that leaves
moves that many keys. A ring gives every master ``vnodes`` points (BLAKE3 of its id and the
point's index, 160 bits, the same space as node and key ids); a master owns the arcs that end
at its points, its share concentrates around ``1/n`` (relative spread about
``1/sqrt(vnodes)``), and a leave or join moves only the keys on the arcs next to the changed
master's points, which is what the membership-change test measures. Walking the ring clockwise
from the key also gives the replica order directly, and the cluster-aware walks below
(``replica_scope``) are simple walks that skip masters. Lookup is a bisect: ``O(log(n*vnodes))``.

``replica_scope``:
  - ``"mesh"``: replicas spread across clusters: walk the ring and take masters of clusters not
    yet in the list until ``r`` clusters are used (or every cluster), then any further master;
  - ``"cluster"``: replicas stay in the home's cluster (no replication traffic on the WAN):
    fewer than ``r`` when that cluster has fewer masters.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import blake3

ID_BYTES = 20  # 160-bit ids, as mesh.core.identity.node_id_of
DEFAULT_REPLICAS = 3
DEFAULT_VNODES = 128
MAX_VNODES = 4096
SCOPES = ("mesh", "cluster")


def key_id(key: str) -> str:
    """The 160-bit id of a key: the first 20 bytes of BLAKE3 of its UTF-8, in hex."""
    return blake3.blake3(key.encode("utf-8")).digest(length=ID_BYTES).hex()


def _point(node_id: str, index: int) -> int:
    raw = bytes.fromhex(node_id) + index.to_bytes(4, "big")
    return int.from_bytes(blake3.blake3(raw).digest(length=ID_BYTES), "big")


@dataclass(frozen=True, order=True)
class Master:
    """A master as placement sees it: its node id (160-bit hex) and its cluster's name."""

    node_id: str
    cluster: str = "default"

    def __post_init__(self) -> None:
        if len(self.node_id) != 2 * ID_BYTES:
            raise ValueError(f"a node id is {2 * ID_BYTES} hex digits, not {self.node_id!r}")
        int(self.node_id, 16)  # raises ValueError for non-hex
        if not self.cluster:
            raise ValueError("a master's cluster has a name")


class Placement:
    """The ring of one master set. Immutable once built; build a new one on each change."""

    def __init__(self, masters: Iterable[Master], vnodes: int = DEFAULT_VNODES) -> None:
        if not 1 <= vnodes <= MAX_VNODES:
            raise ValueError(f"vnodes must be 1..{MAX_VNODES}")
        self.masters: dict[str, Master] = {}
        for m in masters:
            if m.node_id in self.masters and self.masters[m.node_id] != m:
                raise ValueError(f"master {m.node_id} is listed in two clusters")
            self.masters[m.node_id] = m
        self.vnodes = vnodes
        self.clusters = frozenset(m.cluster for m in self.masters.values())
        points = sorted((_point(nid, i), nid) for nid in self.masters for i in range(vnodes))
        self._positions = [p for p, _ in points]
        self._owners = [nid for _, nid in points]

    def __len__(self) -> int:
        return len(self.masters)

    def _walk(self, kid: str) -> Iterable[str]:
        """Distinct masters clockwise from the key's position, each once."""
        n = len(self._positions)
        if n == 0:
            return
        start = bisect_right(self._positions, int(kid, 16))
        seen: set[str] = set()
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.masters):
                    return

    def replicas_of_id(self, kid: str, r: int = DEFAULT_REPLICAS, scope: str = "mesh") -> list[str]:
        """The ordered list (home first) for a key id; at most ``r`` node ids."""
        if scope not in SCOPES:
            raise ValueError(f"replica_scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        if r < 1:
            raise ValueError("r must be at least 1")
        chosen: list[str] = []
        deferred: list[str] = []
        used: set[str] = set()
        home_cluster = ""
        wanted_clusters = min(r, len(self.clusters))
        for nid in self._walk(kid):
            cluster = self.masters[nid].cluster
            if not chosen:
                home_cluster = cluster
            elif scope == "cluster":
                if cluster != home_cluster:
                    continue
            elif cluster in used and len(used) < wanted_clusters:
                deferred.append(nid)
                continue
            chosen.append(nid)
            used.add(cluster)
            if len(chosen) == r:
                return chosen
        return (chosen + deferred)[:r]

    def replicas(self, key: str, r: int = DEFAULT_REPLICAS, scope: str = "mesh") -> list[str]:
        """The ordered list (home first) for a key."""
        return self.replicas_of_id(key_id(key), r, scope)

    def home(self, key: str) -> str | None:
        found = self.replicas(key, 1)
        return found[0] if found else None


def replicas(key: str, masters: Sequence[Master], r: int = DEFAULT_REPLICAS, scope: str = "mesh",
             vnodes: int = DEFAULT_VNODES) -> list[str]:
    """One-shot form of ``Placement(masters).replicas(key, r, scope)``; build a Placement to reuse."""
    return Placement(masters, vnodes).replicas(key, r, scope)


@dataclass(frozen=True)
class Move:
    """One key whose list changes between two master sets."""

    key: str
    old: tuple[str, ...]
    new: tuple[str, ...]

    @property
    def home_moved(self) -> bool:
        return self.old[:1] != self.new[:1]

    @property
    def gained(self) -> tuple[str, ...]:
        """Masters that must receive the key's counter (hand-off targets)."""
        return tuple(n for n in self.new if n not in self.old)


def plan_handoff(old: Placement, new: Placement, keys: Iterable[str], r: int = DEFAULT_REPLICAS,
                 scope: str = "mesh") -> list[Move]:
    """The keys (of those given, e.g. the keys a master holds) whose list differs, and how."""
    moves = []
    for key in keys:
        kid = key_id(key)
        before = tuple(old.replicas_of_id(kid, r, scope))
        after = tuple(new.replicas_of_id(kid, r, scope))
        if before != after:
            moves.append(Move(key, before, after))
    return moves
