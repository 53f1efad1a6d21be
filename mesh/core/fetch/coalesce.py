"""One WAN transfer per chunk per cluster: the master's table of WAN pulls in progress (sans-IO).

The first node of the cluster to miss a chunk (``WanClaim``) is granted the one WAN transfer
(``WanGrant``) under a lease; every later claimant waits (``WanWait``). When the owner reports
``WanDone(ok=True)`` it becomes a holder (recorded in the ``HolderIndex`` at once) and every
waiter is sent ``InCluster(chunk, [owner])``. If the owner fails (``WanDone(ok=False)``), dies
(``forget``) or lets its lease lapse, the next waiter is granted the transfer. A claim for a
chunk the cluster already holds is answered with ``InCluster`` right away, minus the nodes the
claimant says failed it. The owner renews its lease by claiming again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.core.fetch.messages import (
    MAX_IN_CLUSTER,
    InCluster,
    Send,
    WanClaim,
    WanDone,
    WanGrant,
    WanWait,
)
from mesh.core.holders import HolderIndex
from mesh.errors import ProtocolError

MAX_PULLS = 65_536  # chunks being pulled across the WAN by one cluster at once
MAX_WAITERS = 1024  # nodes waiting for one chunk


@dataclass
class _Pull:
    owner: str
    expires: float
    waiters: list[str] = field(default_factory=list)


class WanCoalescer:
    """Runs on a cluster's master next to its ``HolderIndex``."""

    def __init__(self, index: HolderIndex | None = None, lease: float = 120.0, *,
                 max_pulls: int = MAX_PULLS, max_waiters: int = MAX_WAITERS) -> None:
        self.index = index
        self.lease = lease
        self.max_pulls = max_pulls
        self.max_waiters = max_waiters
        self._pulls: dict[str, _Pull] = {}
        self._out: list[Send] = []
        self.granted = 0  # WAN transfers granted (a metric; the simulator checks it)

    def receive(self, node: str, msg: WanClaim | WanDone, now: float) -> None:
        if isinstance(msg, WanClaim):
            self._claim(node, msg, now)
        elif isinstance(msg, WanDone):
            pull = self._pulls.get(msg.chunk)
            if pull is None or pull.owner != node:
                return  # a late or duplicate report
            if msg.ok:
                del self._pulls[msg.chunk]
                if self.index is not None:
                    self.index.add(node, msg.chunk, now)
                for w in dict.fromkeys(pull.waiters):
                    self._out.append(Send(w, InCluster(msg.chunk, (node,))))
            else:
                self._next_owner(msg.chunk, pull, now)
        else:
            raise ProtocolError("malformed_fetch", f"{type(msg).__name__} is not for a master")

    def _claim(self, node: str, msg: WanClaim, now: float) -> None:
        if self.index is not None:
            have = [n for n in self.index.holders(msg.chunk, now) if n != node and n not in msg.tried]
            if have:
                self._out.append(Send(node, InCluster(msg.chunk, tuple(have[:MAX_IN_CLUSTER]))))
                return
        pull = self._pulls.get(msg.chunk)
        if pull is None:
            if len(self._pulls) >= self.max_pulls:
                raise ProtocolError("too_many_pulls", f"more than {self.max_pulls} WAN pulls")
            self._pulls[msg.chunk] = _Pull(node, now + self.lease)
            self.granted += 1
            self._out.append(Send(node, WanGrant(msg.chunk)))
        elif pull.owner == node:
            pull.expires = now + self.lease
            self._out.append(Send(node, WanGrant(msg.chunk)))
        else:
            if node not in pull.waiters:
                if len(pull.waiters) >= self.max_waiters:
                    raise ProtocolError("too_many_waiters", msg.chunk)
                pull.waiters.append(node)
            self._out.append(Send(node, WanWait(msg.chunk)))

    def _next_owner(self, chunk: str, pull: _Pull, now: float) -> None:
        if not pull.waiters:
            del self._pulls[chunk]
            return
        pull.owner, pull.expires = pull.waiters.pop(0), now + self.lease
        self.granted += 1
        self._out.append(Send(pull.owner, WanGrant(chunk)))

    def forget(self, node: str, now: float) -> None:
        """The failure detector declared ``node`` dead."""
        for chunk, pull in list(self._pulls.items()):
            pull.waiters = [w for w in pull.waiters if w != node]
            if pull.owner == node:
                self._next_owner(chunk, pull, now)

    def pulling(self, chunk: str) -> str | None:
        pull = self._pulls.get(chunk)
        return None if pull is None else pull.owner

    def next_deadline(self) -> float | None:
        return min((p.expires for p in self._pulls.values()), default=None)

    def handle_timer(self, now: float) -> None:
        for chunk, pull in list(self._pulls.items()):
            if pull.expires <= now:
                self._next_owner(chunk, pull, now)

    def drain(self) -> list[Send]:
        out, self._out = self._out, []
        return out

