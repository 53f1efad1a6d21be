"""Member state and the SWIM merge rules.

Incarnation numbers order what is said about a member: only the member itself raises its
incarnation (to refute a suspicion or on restart). The rules, as pure predicates:
- alive(i) wins over anything with a lower incarnation; an unknown member becomes known;
- suspect(i) wins over alive with incarnation <= i;
- dead(i) / left(i) wins over alive or suspect with incarnation <= i;
- nothing but a higher-incarnation alive brings back a dead or left member.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mesh.core.membership.messages import Addr


class MemberState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True)
class MemberInfo:
    """One member as the view API shows it."""

    id: str
    cluster: str
    role: str
    gossip: Addr
    http: str
    state: MemberState
    incarnation: int
    rtt: float | None  # smoothed round-trip time of our direct probes, seconds
    since: float  # when the state last changed (our clock)
    # our best estimate of the round-trip time to it, seconds: ``rtt`` when we probed it, else the
    # Vivaldi distance between our coordinate and the one it gossiped; None if neither (or ourselves)
    rtt_estimate: float | None = None


@dataclass
class Member:
    id: str
    cluster: str
    role: str
    gossip: Addr
    http: str
    state: MemberState
    incarnation: int
    since: float
    rtt: float | None = None

    def info(self, rtt_estimate: float | None = None) -> MemberInfo:
        return MemberInfo(self.id, self.cluster, self.role, self.gossip, self.http, self.state,
                          self.incarnation, self.rtt, self.since, rtt_estimate)

    @property
    def reachable(self) -> bool:
        return self.state in (MemberState.ALIVE, MemberState.SUSPECT)


def alive_wins(current: Member | None, incarnation: int) -> bool:
    return current is None or incarnation > current.incarnation


def suspect_wins(current: Member | None, incarnation: int) -> bool:
    return current is not None and current.state == MemberState.ALIVE and incarnation >= current.incarnation


def dead_wins(current: Member | None, incarnation: int) -> bool:
    return current is not None and current.reachable and incarnation >= current.incarnation


def observe_rtt(current: float | None, sample: float, weight: float = 0.2) -> float:
    """Exponentially smoothed round-trip time."""
    return sample if current is None else (1 - weight) * current + weight * sample
