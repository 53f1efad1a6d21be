"""Model checking of the issuance core: random faults, invariants checked after every event."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.core.issuance import Issuer
from mesh.errors import ReplicasUnreachable
from tests.issuance.cluster import SimCluster, Violation

OPS = st.lists(st.tuples(st.sampled_from(["commit", "commit", "commit", "run", "crash", "restart",
                                           "partition", "heal", "loss", "roster"]),
                         st.integers(0, 63)), min_size=5, max_size=40)


def play(c: SimCluster, ops: list[tuple[str, int]]) -> None:
    for op, i in ops:
        match op:
            case "commit":
                c.commit(i)
            case "run":
                c.run(0.1 * i)
            case "crash":
                c.crash(i)
            case "restart":
                c.restart(i)
            case "partition":
                c.partition(i)
            case "heal":
                c.heal()
            case "loss":
                c.loss = (i % 4) * 0.1
            case "roster":
                c.change_roster(i)
        c.run(0.2)
        c.check()


def recover_and_commit(c: SimCluster) -> None:
    """After the faults stop, every writer's next commit succeeds."""
    c.loss = 0.0
    c.heal()
    for i in range(len(c.hosts)):
        c.restart(i)
    c.run(c.config.commit_timeout + 2)
    before = [len(w.acked) for w in c.writers]
    for i in range(len(c.writers)):
        c.commit(i, may_expect_parent=False)
    c.run(c.config.commit_timeout)
    assert all(w.pending is None for w in c.writers)
    assert [len(w.acked) for w in c.writers] == [b + 1 for b in before]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), ops=OPS)
def test_invariants_hold_under_crashes_loss_partitions_and_roster_changes(seed, ops):
    c = SimCluster(seed)
    play(c, ops)
    recover_and_commit(c)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), ops=OPS)
def test_invariants_hold_with_cluster_scoped_replicas(seed, ops):
    from mesh.core.issuance import IssuerConfig
    c = SimCluster(seed, masters=6, clusters=2,
                   config=IssuerConfig(commit_timeout=10.0, retry_interval=0.5, vnodes=16, replica_scope="cluster"))
    play(c, ops)
    recover_and_commit(c)


class SkipsReplicaWrite(Issuer):
    """A broken home: acknowledges after its own write, without the replicas'."""

    def _send_accepts(self, key, lead, now):
        lead.accept_set = (self.node_id,)
        super()._send_accepts(key, lead, now)


def test_a_home_that_skips_the_replica_write_is_caught():
    c = SimCluster(7, issuer_cls=SkipsReplicaWrite)
    with pytest.raises(Violation, match="durable on 1 master"):
        play(c, [("commit", i) for i in range(4)])


def test_homes_of_both_sides_of_a_partition_never_issue_one_number_twice():
    c = SimCluster(11, masters=5, writers=6, keys=1)
    for rnd in range(6):
        c.partition(rnd)
        for i in range(6):
            c.commit(i)
            c.run(0.3)
        c.run(11)
    recover_and_commit(c)
    assert len(c.acked) > 6


def test_a_commit_with_its_majority_unreachable_fails_in_bounded_time_naming_home_and_replicas():
    c = SimCluster(3, masters=5, writers=1, keys=1)
    w = c.writers[0]
    c.commit(0)
    c.run(2)
    assert w.acked == [1]
    host = c.hosts[w.host].issuer
    replicas = host.replica_set(w.key)
    others = [n for n in replicas if n != w.host]
    for n in others:  # cut the writer's master away from the other replicas; keep its view stale
        c.group[n] = 1
    errors = []
    original = c._done
    c._done = lambda d: (errors.append(d.error), original(d))
    c.commit(0)
    c.run(c.config.commit_timeout + 0.5)
    assert w.pending is None and w.acked == [1]
    err = errors[-1]
    assert isinstance(err, ReplicasUnreachable)
    if host.home_of(w.key) == w.host:
        assert w.host[:12] in err.message
    assert any(n[:12] in err.message for n in others)
