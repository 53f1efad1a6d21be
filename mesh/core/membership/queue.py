"""The broadcast queue: updates piggybacked on datagrams, each sent a bounded number of times.

An update is retransmitted ``retransmit_mult * ceil(log10(n + 1))`` times (n = members), the
SWIM bound under which an epidemic reaches everyone with high probability. A newer update about
the same subject replaces the older one. Items sent fewest times go first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def retransmit_limit(mult: int, members: int) -> int:
    return mult * max(1, math.ceil(math.log10(members + 1)))


@dataclass
class _Item(Generic[T]):
    update: T
    transmits: int
    order: int  # newer items have larger order and go first among equals


class BroadcastQueue(Generic[T]):
    def __init__(self, retransmit_mult: int, max_items: int) -> None:
        self.retransmit_mult = retransmit_mult
        self.max_items = max_items
        self._items: dict[Hashable, _Item[T]] = {}
        self._order = 0
        self.dropped = 0  # evicted before being sent enough times (queue full)

    def __len__(self) -> int:
        return len(self._items)

    def push(self, subject: Hashable, update: T) -> None:
        """Queue ``update``, replacing any queued update about the same ``subject``."""
        self._order += 1
        self._items.pop(subject, None)
        if len(self._items) >= self.max_items:
            victim = max(self._items, key=lambda k: (self._items[k].transmits, -self._items[k].order))
            del self._items[victim]
            self.dropped += 1
        self._items[subject] = _Item(update, 0, self._order)

    def take(self, members: int, budget: int, size: Callable[[T], int], max_count: int | None = None) -> list[T]:
        """Updates that fit in ``budget`` bytes; each taken update counts one transmission."""
        limit = retransmit_limit(self.retransmit_mult, members)
        chosen: list[T] = []
        for key in sorted(self._items, key=lambda k: (self._items[k].transmits, -self._items[k].order)):
            if max_count is not None and len(chosen) >= max_count:
                break
            item = self._items[key]
            cost = size(item.update)
            if cost > budget:
                continue
            budget -= cost
            chosen.append(item.update)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[key]
        return chosen

    def pending(self) -> list[T]:
        return [item.update for item in self._items.values()]
