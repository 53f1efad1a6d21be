"""What every simulated system offers the runner, and what the runner gives it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.engine import Engine
from sim.invariants import InvariantChecker
from sim.network import Host, Network
from sim.scenario import Scenario
from sim.workload import Op

CONTROL_BYTES = 200  # a request, an ack or a small header
CHUNK_REF_BYTES = 48  # one (hash, size) in a manifest or a chunk list


@dataclass
class Context:
    engine: Engine
    net: Network
    scenario: Scenario
    hosts: list[Host]
    checker: InvariantChecker
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    _masters: dict[str, list[Host]] | None = field(default=None, repr=False)

    def master_of(self, cluster: str) -> str | None:
        """The first live master of a cluster."""
        if self._masters is None:
            self._masters = {}
            for h in self.hosts:
                if h.master:
                    self._masters.setdefault(h.cluster, []).append(h)
        for h in self._masters.get(cluster, ()):
            if h.up:
                return h.name
        return None


Done = Callable[[bool, int], None]  # (ok, version)


class System(ABC):
    """A storage system under test. ``write`` and ``read`` call ``done(ok, version)`` once."""

    name = "base"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def start(self) -> None:
        """Arm periodic work (gossip) before the first operation; none by default."""
        return None

    @abstractmethod
    def write(self, op: Op, done: Done) -> None: ...

    @abstractmethod
    def read(self, op: Op, done: Done) -> None: ...

    def host_changed(self, host: Host) -> None:
        """A host crashed (``host.up`` is False) or restarted; nothing to do by default."""
        return None

    def report(self) -> dict[str, Any]:
        """System-specific figures for the report."""
        return {}
