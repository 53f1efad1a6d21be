"""Local health awareness (Lifeguard): a member that misses acks stretches its own timeouts.

A score of 0 is healthy. Failed probes with missing nacks, and having to refute a suspicion
about ourselves, raise it; successful probes lower it. Timeouts are multiplied by score + 1, so
a slow or overloaded member waits longer before it accuses healthy peers.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be >= 1")
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    @property
    def multiplier(self) -> int:
        return self.score + 1

    def scale(self, timeout: float) -> float:
        return timeout * self.multiplier
