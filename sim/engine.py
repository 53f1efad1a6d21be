"""The virtual clock and event heap: the only notion of time inside the simulator.

Events are kept in a heap keyed by ``(time, sequence)`` so two events at the same instant run in
the order they were scheduled, and a run is a pure function of the scenario and the seed. All
randomness comes from ``Engine.rng(purpose)``: one ``random.Random`` per purpose, derived from
the seed, so adding a random draw for one purpose never shifts another purpose's draws.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

import blake3

from mesh.errors import EltonError


class SimulationError(EltonError):
    """The simulation failed."""

    code = "simulation"


class Timer:
    """A handle on a scheduled event; ``cancel()`` makes the engine skip it."""

    __slots__ = ("at", "cancelled")

    def __init__(self, at: float) -> None:
        self.at = at
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Runs callbacks in virtual-time order. Never reads the wall clock; no threads."""

    def __init__(self, seed: int, max_events: int = 500_000_000) -> None:
        self.seed = seed
        self.now = 0.0
        self.events_run = 0
        self.max_events = max_events
        self._heap: list[tuple[float, int, Timer | None, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self._rngs: dict[str, random.Random] = {}
        self._stopped = False

    def rng(self, purpose: str) -> random.Random:
        """The random stream for one purpose ("loss", "workload", "faults", ...)."""
        r = self._rngs.get(purpose)
        if r is None:
            digest = blake3.blake3(f"{self.seed}:{purpose}".encode()).digest(length=8)
            r = self._rngs[purpose] = random.Random(int.from_bytes(digest, "big"))
        return r

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``when`` (not cancellable; the cheap path)."""
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, None, fn, args))

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def timer(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Like ``at`` but returns a handle that can cancel the event."""
        when = max(when, self.now)
        t = Timer(when)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, t, fn, args))
        return t

    def stop(self) -> None:
        self._stopped = True

    def pending(self) -> int:
        return len(self._heap)

    def run(self, until: float, on_progress: Callable[[float], None] | None = None,
            progress_every: int = 20_000) -> None:
        """Run events with time <= ``until``; leave the clock at ``until``."""
        heap = self._heap
        pop = heapq.heappop
        count = 0
        self._stopped = False
        while heap and not self._stopped:
            when = heap[0][0]
            if when > until:
                break
            _, _, t, fn, args = pop(heap)
            if t is not None and t.cancelled:
                continue
            self.now = when
            fn(*args)
            count += 1
            if on_progress is not None and count % progress_every == 0:
                on_progress(self.now)
            if self.events_run + count > self.max_events:
                raise SimulationError(f"more than {self.max_events} events; raise max_events or shorten the run")
        self.events_run += count
        if not self._stopped:
            self.now = max(self.now, until)
