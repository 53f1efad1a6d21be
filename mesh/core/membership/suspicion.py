"""Suspicion timeouts (Lifeguard): pure functions that return a deadline.

A suspect is declared dead when its deadline passes. The deadline starts at ``max_timeout``
and falls towards ``min_timeout`` as independent members confirm the suspicion, so a member
that alone suspects a healthy peer (say, because it is slow itself) waits longest.
"""

from __future__ import annotations

import math


def suspicion_timeouts(mult: float, max_mult: float, members: int, interval: float) -> tuple[float, float]:
    """(min, max) suspicion timeout for a pool of ``members`` probed every ``interval`` seconds."""
    scale = max(1.0, math.log10(max(1, members)))
    low = mult * scale * interval
    return low, max(low, max_mult * low)


def expected_confirmations(indirect_checks: int, alive_members: int) -> int:
    """How many other members we can hope will confirm: at most the members besides us and the suspect."""
    return max(0, min(indirect_checks, alive_members - 2))


def suspicion_deadline(start: float, min_timeout: float, max_timeout: float, expected: int,
                       confirmations: int) -> float:
    """When a suspicion started at ``start`` expires, after ``confirmations`` of ``expected``."""
    if expected < 1:
        return start + min_timeout
    fraction = math.log(min(confirmations, expected) + 1.0) / math.log(expected + 1.0)
    timeout = max_timeout - fraction * (max_timeout - min_timeout)
    return start + max(min_timeout, timeout)
