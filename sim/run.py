"""Runs one scenario with one seed for each system, each on its own engine and network.

Every system gets a fresh engine with the same seed, so the workload and fault schedule
(drawn from their own random streams) are identical for all systems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.engine import Engine
from sim.faults import HostEvent, build_faults
from sim.invariants import InvariantChecker
from sim.network import Host, Ledger, LinkSpec, Network
from sim.scenario import Scenario
from sim.systems.base import Context, System
from sim.workload import Op, build_ops

SERIES_HOSTS_LIMIT = 64  # above this many hosts, traffic over time is kept per cluster


def system_classes() -> dict[str, type[System]]:
    from sim.systems.elton import EltonSystem
    from sim.systems.georep import GeorepSystem
    from sim.systems.nfs import NfsSystem

    return {"elton": EltonSystem, "nfs": NfsSystem, "georep": GeorepSystem}


@dataclass
class SystemResult:
    name: str
    ledger: Ledger
    read_latencies: list[float] = field(default_factory=list)
    commit_latencies: list[float] = field(default_factory=list)
    reads_failed: int = 0
    commits_failed: int = 0
    reads_started: int = 0
    commits_started: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    sim_seconds: float = 0.0
    ops: int = 0
    host_events: int = 0


def build_world(sc: Scenario, seed: int) -> tuple[Engine, Network, list[Host], list[Op], list[HostEvent]]:
    engine = Engine(seed)
    hosts = [Host(f"{c.name}/{i}", c.name, i, i < c.masters) for c in sc.clusters for i in range(c.hosts)]
    ops = build_ops(sc, engine)
    partitions, host_events = build_faults(sc, engine)
    ledger = Ledger(sc.prices, sc.bucket_s, series_hosts=len(hosts) <= SERIES_HOSTS_LIMIT)
    lan = {c.name: LinkSpec("lan", c.lan_latency_s, c.lan_bandwidth_bps) for c in sc.clusters}
    wan = {(s.a, s.b): LinkSpec(s.link_class, s.latency_s, s.bandwidth_bps, s.loss) for s in sc.links}
    net = Network(engine, hosts, lan, wan, partitions, ledger, sharing=sc.sharing)
    return engine, net, hosts, ops, host_events


def run_system(sc: Scenario, seed: int, name: str, system_cls: type[System] | None = None,
               on_progress: Callable[[float], None] | None = None) -> SystemResult:
    engine, net, hosts, ops, host_events = build_world(sc, seed)
    checker = InvariantChecker()
    ctx = Context(engine, net, sc, hosts, checker)
    system = (system_cls or system_classes()[name])(ctx)
    result = SystemResult(name, net.ledger, ops=len(ops), host_events=len(host_events))

    def start(op: Op) -> None:
        if not net.hosts[op.host].up:
            if op.op == "read":
                result.reads_failed += 1
            else:
                result.commits_failed += 1
            return
        if op.op == "read":
            result.reads_started += 1

            def read_done(ok: bool, version: int) -> None:
                if ok:
                    result.read_latencies.append(engine.now - op.at)
                else:
                    result.reads_failed += 1

            system.read(op, read_done)
        else:
            result.commits_started += 1

            def commit_done(ok: bool, version: int) -> None:
                if ok:
                    result.commit_latencies.append(engine.now - op.at)
                    checker.on_ack(engine.now, op.key, version)
                else:
                    result.commits_failed += 1

            system.write(op, commit_done)

    def host_event(ev: HostEvent) -> None:
        h = net.hosts[ev.host]
        if h.up != ev.up:
            h.up = ev.up
            system.host_changed(h)

    system.start()
    for op in ops:
        engine.at(op.at, start, op)
    for ev in host_events:
        engine.at(ev.at, host_event, ev)
    engine.run(sc.duration_s, on_progress)
    result.counters = dict(sorted(ctx.counters.items()))
    result.violations = list(checker.violations)
    result.extra = system.report()
    result.events = engine.events_run
    result.sim_seconds = engine.now
    return result


def run_scenario(sc: Scenario, seed: int, systems: list[str] | None = None,
                 on_progress: Callable[[str, float], None] | None = None) -> list[SystemResult]:
    names = systems or list(system_classes())
    out = []
    for name in names:
        cb = (lambda t, n=name: on_progress(n, t)) if on_progress is not None else None
        out.append(run_system(sc, seed, name, on_progress=cb))
    return out
