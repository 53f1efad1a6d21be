"""Membership tuning, as profiles (after memberlist's LAN/WAN/local configs).

A member probes and gossips to members of its own cluster at one period and to members of
other clusters at a longer one, with fewer targets and smaller payloads (a LAN pool and a WAN
pool in one overlay). Timeouts are in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

PUSH_PULL_SCALE_THRESHOLD = 32  # members up to which the push-pull interval is the configured one


@dataclass(frozen=True)
class Config:
    probe_interval: float = 0.5  # one probe of a same-cluster member per interval
    probe_timeout: float = 0.2  # wait for a direct ack before asking others
    indirect_checks: int = 3  # members asked to ping the target for us
    cross_probe_interval: float = 2.0  # one probe of another cluster's member per interval
    cross_probe_timeout: float = 0.8
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    cross_gossip_interval: float = 0.5
    cross_gossip_nodes: int = 2
    cross_max_updates: int = 8  # a cross-cluster datagram carries at most this many updates
    push_pull_interval: float = 30.0
    suspicion_mult: float = 3.0  # min suspicion timeout = mult * max(1, log10(n)) * probe interval
    suspicion_max_timeout_mult: float = 2.0  # max = this * min (Lifeguard)
    retransmit_mult: int = 4  # an update is sent retransmit_mult * ceil(log10(n + 1)) times
    awareness_max_multiplier: int = 4  # Lifeguard local health: timeouts stretch up to this factor
    gossip_to_the_dead: float = 10.0  # keep gossiping to a dead member so it can refute
    dead_reclaim: float = 60.0  # forget a member that left after this long
    reconnect_interval: float = 5.0  # push-pull with one dead member this often, so a healed partition merges
    reconnect_timeout: float = 3 * 3600.0  # keep a dead (not left) member this long for reconnects
    max_datagram: int = 1400
    envelope_overhead: int = 200  # room left for the signed envelope around a datagram body
    max_members: int = 4096
    max_broadcasts: int = 4096
    max_relays: int = 256  # indirect pings we run for others at once
    max_events: int = 10_000

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "cross_probe_interval", "cross_probe_timeout",
                     "gossip_interval", "cross_gossip_interval", "push_pull_interval", "reconnect_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.probe_timeout * 2 > self.probe_interval or self.cross_probe_timeout * 2 > self.cross_probe_interval:
            raise ValueError("a probe timeout must be at most half its interval (room for indirect probes)")
        if self.max_datagram <= self.envelope_overhead + 100:
            raise ValueError("max_datagram leaves no room for a message")

    @classmethod
    def lan(cls) -> Config:
        """The default: a dead master is seen dead by all others within about 5 s."""
        return cls()

    @classmethod
    def wan(cls) -> Config:
        """Hosts of one cluster far apart themselves: everything slower and more patient."""
        return cls(probe_interval=3.0, probe_timeout=1.5, cross_probe_interval=6.0, cross_probe_timeout=3.0,
                   gossip_interval=0.5, gossip_nodes=4, cross_gossip_interval=1.0, cross_gossip_nodes=3,
                   push_pull_interval=60.0, suspicion_mult=4.0, suspicion_max_timeout_mult=4.0,
                   awareness_max_multiplier=8, reconnect_interval=15.0)

    @classmethod
    def local(cls) -> Config:
        """Loopback and tests: short periods so a test sees a death in about a second."""
        return cls(probe_interval=0.1, probe_timeout=0.04, cross_probe_interval=0.2, cross_probe_timeout=0.08,
                   gossip_interval=0.05, cross_gossip_interval=0.1, push_pull_interval=2.0,
                   suspicion_mult=3.0, gossip_to_the_dead=2.0, dead_reclaim=30.0, reconnect_interval=0.5)

    def with_(self, **changes: object) -> Config:
        return replace(self, **changes)  # type: ignore[arg-type]


def push_pull_interval(config: Config, members: int) -> float:
    """The push-pull period for a mesh of ``members``: each doubling past 32 members adds one more
    interval (as memberlist does): the full-state exchanges grow with the mesh, and their cost per
    member grows as n / log n instead of n (at 1,000 members, a sixth of the unstretched cost)."""
    if members <= PUSH_PULL_SCALE_THRESHOLD:
        return config.push_pull_interval
    return config.push_pull_interval * (math.ceil(math.log2(members) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1)
