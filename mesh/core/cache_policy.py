"""Which chunks the persistent cache evicts: LRU under a byte quota, pinned chunks never (pure).

A chunk is pinned while any reason holds: ``"last_copy"`` (the last copy of a committed version
known to the mesh), ``"copy:<id>"`` (a transfer or replication is reading it), ... Pinned chunks
sit outside the LRU order and count against the quota; when the last pin goes, the chunk
re-enters as the most recently used (so an unpin never evicts it at once).

The policy never deletes anything: the store asks ``evictions(incoming)`` before writing
``incoming`` bytes, deletes the victims, then calls ``remove`` for each. Usage::

    policy = CachePolicy(quota=50 << 30)
    policy.add(h, size)        # stored (or re-stored); most recently used
    policy.touch(h)            # served
    policy.pin(h, "last_copy") / policy.unpin(h, "last_copy")
    victims = policy.evictions(incoming=size)   # LRU first; never a pinned chunk
    policy.over_quota(incoming)                 # still over after every possible eviction: refuse
"""

from __future__ import annotations

from collections import OrderedDict

MAX_PIN_REASONS = 64  # per chunk
MAX_REASON_LEN = 128


class CachePolicy:
    def __init__(self, quota: int) -> None:
        if quota < 0:
            raise ValueError("quota must not be negative")
        self.quota = quota
        self.used = 0
        self._lru: OrderedDict[str, int] = OrderedDict()  # unpinned, oldest first
        self._pinned: dict[str, int] = {}  # pinned and stored
        self._pins: dict[str, set[str]] = {}  # chunk -> reasons (a chunk may be pinned before it arrives)

    def __contains__(self, chunk: str) -> bool:
        return chunk in self._lru or chunk in self._pinned

    def __len__(self) -> int:
        return len(self._lru) + len(self._pinned)

    def size_of(self, chunk: str) -> int | None:
        return self._lru.get(chunk, self._pinned.get(chunk))

    def add(self, chunk: str, size: int) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        self.remove(chunk)
        self.used += size
        if chunk in self._pins:
            self._pinned[chunk] = size
        else:
            self._lru[chunk] = size

    def touch(self, chunk: str) -> None:
        if chunk in self._lru:
            self._lru.move_to_end(chunk)

    def remove(self, chunk: str) -> None:
        size = self._lru.pop(chunk, None)
        if size is None:
            size = self._pinned.pop(chunk, None)
        if size is not None:
            self.used -= size

    def pin(self, chunk: str, reason: str) -> None:
        reasons = self._pins.setdefault(chunk, set())
        if reason not in reasons and (len(reasons) >= MAX_PIN_REASONS or len(reason) > MAX_REASON_LEN):
            raise ValueError(f"too many or too long pin reasons for {chunk}")
        reasons.add(reason)
        size = self._lru.pop(chunk, None)
        if size is not None:
            self._pinned[chunk] = size

    def unpin(self, chunk: str, reason: str) -> None:
        reasons = self._pins.get(chunk)
        if reasons is None:
            return
        reasons.discard(reason)
        if not reasons:
            del self._pins[chunk]
            size = self._pinned.pop(chunk, None)
            if size is not None:
                self._lru[chunk] = size

    def is_pinned(self, chunk: str) -> bool:
        return chunk in self._pins

    @property
    def pinned_bytes(self) -> int:
        return sum(self._pinned.values())

    def evictions(self, incoming: int = 0) -> list[str]:
        """The least recently used unpinned chunks whose removal brings ``used + incoming`` under the quota."""
        excess = self.used + incoming - self.quota
        victims = []
        for chunk, size in self._lru.items():
            if excess <= 0:
                break
            victims.append(chunk)
            excess -= size
        return victims

    def over_quota(self, incoming: int = 0) -> bool:
        """Whether ``incoming`` bytes cannot fit even after evicting every unpinned chunk."""
        return self.pinned_bytes + incoming > self.quota
