"""Faults: partitions, crashes and churn from the scenario, or drawn at random from the seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.engine import Engine
from sim.network import Partition
from sim.scenario import Scenario, ScenarioError
from sim.workload import check_host


@dataclass(frozen=True)
class HostEvent:
    at: float
    host: str
    up: bool  # False: crash; True: restart (with its disk: chunks survive)


def build_faults(sc: Scenario, engine: Engine) -> tuple[list[Partition], list[HostEvent]]:
    rng = engine.rng("faults")
    partitions: list[Partition] = []
    events: list[HostEvent] = []
    names = sc.cluster_names()
    for i, f in enumerate(sc.faults):
        where = f"faults[{i}]"
        kind = f.get("kind")
        if kind == "partition":
            a, b = frozenset(f.get("a", [])), frozenset(f.get("b", []))
            if not a or not b or not (a | b) <= set(names):
                raise ScenarioError(f"{where}: a and b must list clusters")
            partitions.append(Partition(float(f["start"]), float(f["end"]), a, b))
        elif kind == "crash":
            host = check_host(sc, str(f["host"]), where)
            events.append(HostEvent(float(f["at"]), host, False))
            if "restart_at" in f:
                events.append(HostEvent(float(f["restart_at"]), host, True))
        elif kind == "churn":
            events.extend(_churn(sc, f, rng, where))
        else:
            raise ScenarioError(f"{where}.kind must be partition, crash or churn, not {kind!r}")
    events.sort(key=lambda e: e.at)
    return partitions, events


def _churn(sc: Scenario, f: dict[str, Any], rng: Any, where: str) -> list[HostEvent]:
    """Hosts fail at ``rate_per_s`` (across the eligible hosts) and come back after ``down_s``."""
    clusters = list(f.get("clusters", sc.cluster_names()))
    include_masters = bool(f.get("masters", False))
    keep = set(f.get("keep", []))  # hosts that never fail (e.g. the writer)
    pool = [f"{c.name}/{i}" for c in sc.clusters if c.name in clusters
            for i in range(0 if include_masters else c.masters, c.hosts)]
    pool = [h for h in pool if h not in keep]
    if not pool:
        raise ScenarioError(f"{where}: no host may fail")
    rate = float(f.get("rate_per_s", 0.01))
    down = float(f.get("down_s", 60.0))
    t = float(f.get("start", 0.0))
    end = float(f.get("end", sc.duration_s))
    events = []
    down_until: dict[str, float] = {}
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= end:
            break
        host = pool[rng.randrange(len(pool))]
        if down_until.get(host, -1.0) > t:
            continue
        back = t + rng.uniform(0.5 * down, 1.5 * down)
        down_until[host] = back
        events.append(HostEvent(t, host, False))
        events.append(HostEvent(back, host, True))
    return events
