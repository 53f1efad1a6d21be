"""The membership core on a virtual clock: convergence, failure detection, refutation, leave, revoke."""

from __future__ import annotations

import pytest

from mesh.core.admission import issue_revocation
from mesh.core.membership import Config, Datagram, MemberState, SendDatagram
from mesh.core.membership.messages import Alive, Dead, Suspect
from tests.membership.simnet import ADMIN, SimNet, ident


def mesh_of(n: int, config: Config | None = None, clusters: tuple[str, ...] = ("a",), **kw) -> SimNet:
    net = SimNet(config or Config.lan(), **kw)
    for i in range(n):
        net.add(i, cluster=clusters[i % len(clusters)])
    return net


def all_alive(net: SimNet, n: int) -> bool:
    ids = {ident(i).node_id for i in range(n)}
    return all(net.view_of(a) == dict.fromkeys(ids, "alive") for a in net.nodes if a not in net.down)


def test_five_members_converge_and_stay_alive():
    net = mesh_of(5)
    net.run_until(lambda: all_alive(net, 5), limit=5)
    net.run(20)
    assert all_alive(net, 5)
    for core in net.nodes.values():
        assert core.awareness.score == 0
        assert all(m.rtt is not None for m in core.members() if m.id != core.id)


@pytest.mark.parametrize("seed", range(5))
def test_a_killed_member_is_seen_dead_by_all_within_5_seconds(seed):
    net = mesh_of(5, seed=seed)
    net.run(5)
    net.kill(3)
    took = net.run_until(lambda: net.states_of(3) == {"dead"}, limit=5)
    assert took < 5
    assert all(s == "alive" for i in (0, 1, 2, 4) for s in [net.states_of(i).pop()])


def test_two_clusters_converge_and_cross_datagrams_carry_less():
    config = Config.lan().with_(cross_max_updates=2)
    net = mesh_of(6, config, clusters=("a", "b"))
    net.run_until(lambda: all_alive(net, 6), limit=15)
    clusters = {core.id: core.cluster for core in net.nodes.values()}
    assert {m.id: m.cluster for m in net.nodes[net.addr(0)].members()} == clusters
    cluster_at = {a: c.cluster for a, c in net.nodes.items()}
    cross = [d for src, dst, d in net.sent if cluster_at[src] != cluster_at[dst]]
    local = [d for src, dst, d in net.sent if cluster_at[src] == cluster_at[dst]]
    assert cross and local
    assert max(len(d.updates) for d in cross) <= 2 < max(len(d.updates) for d in local)
    assert len(cross) < len(local)


def test_a_false_suspicion_is_refuted_with_a_higher_incarnation():
    net = mesh_of(4)
    net.run(3)
    victim = net.nodes[net.addr(2)]
    before = victim.incarnation
    accuser = net.nodes[net.addr(0)]
    accuser.receive(ident(1).node_id, net.addr(1), Datagram(None, (Suspect(victim.id, before, ident(1).node_id),)),
                    net.now)
    net.run(3)
    assert victim.incarnation > before
    assert net.states_of(2) == {"alive"}
    assert all(core.member(victim.id).incarnation == victim.incarnation for core in net.nodes.values())


def test_dead_rumour_about_oneself_is_refuted():
    net = mesh_of(3)
    net.run(2)
    me = net.nodes[net.addr(1)]
    me.receive(ident(0).node_id, net.addr(0), Datagram(None, (Dead(me.id, me.incarnation, ident(0).node_id),)),
               net.now)
    assert me.member(me.id).state == MemberState.ALIVE
    net.run(3)
    assert net.states_of(1) == {"alive"}


def test_leave_is_seen_as_left_not_dead():
    net = mesh_of(4)
    net.run(3)
    net.nodes[net.addr(3)].leave(net.now)
    net._flush(net.addr(3))
    net.run_until(lambda: net.states_of(3) - {"left"} == set() or net.states_of(3) == {"left"}, limit=3)
    net.kill(3)
    net.run(5)
    assert net.states_of(3) == {"left"}


def test_leave_tells_every_member_of_its_cluster_directly():
    """The hosts of the leaver's cluster (those that copy chunks to it) hear of the leave in the
    leave's own datagrams, whatever the cluster's size; other clusters get a few, as before."""
    config = Config.lan()
    net = mesh_of(24, config, clusters=("a", "b"))
    net.run_until(lambda: all_alive(net, 24), limit=20)
    leaver = net.nodes[net.addr(0)]
    leaver.leave(net.now)
    told = {d.addr for d in leaver.drain() if isinstance(d, SendDatagram)
            and any(isinstance(u, Dead) and u.node == leaver.id for u in d.datagram.updates)}
    own = {m.gossip for m in leaver.members() if m.cluster == leaver.cluster and m.id != leaver.id}
    other = {m.gossip for m in leaver.members() if m.cluster != leaver.cluster}
    assert len(own) == 11 and own <= told
    assert 0 < len(told & other) <= config.gossip_nodes + config.cross_gossip_nodes < len(other)


def test_restart_with_higher_incarnation_comes_back_alive():
    net = mesh_of(4)
    net.run(3)
    old = net.nodes[net.addr(2)].incarnation
    net.kill(2)
    net.run_until(lambda: net.states_of(2) == {"dead"}, limit=6)
    net.add(2, incarnation=old + 1, seed_node=0)
    net.run_until(lambda: net.states_of(2) == {"alive"}, limit=5)
    assert {c.member(ident(2).node_id).incarnation for c in net.nodes.values()} == {old + 1}


def test_dead_members_are_reaped_after_the_reconnect_timeout():
    net = mesh_of(3, Config.local().with_(dead_reclaim=5.0, reconnect_timeout=20.0))
    net.run(2)
    net.kill(2)
    net.run_until(lambda: net.states_of(2) == {"dead"}, limit=3)
    net.run(6)
    assert net.states_of(2) == {"dead"}, "a dead member is kept (and retried) past dead_reclaim"
    net.run(16)
    assert net.states_of(2) == {"unknown"}
    events = net.nodes[net.addr(0)].drain_events()
    assert [e.kind for e in events if e.member.id == ident(2).node_id][-2:] == ["dead", "removed"]


def test_left_members_are_reaped_after_the_reclaim_time():
    net = mesh_of(3, Config.local().with_(dead_reclaim=5.0))
    net.run(2)
    net.nodes[net.addr(2)].leave(net.now)
    net._flush(net.addr(2))
    net.run(0.05)  # the goodbye goes out before the process exits
    net.kill(2)
    net.run_until(lambda: net.states_of(2) == {"left"}, limit=3)
    net.run(6)
    assert net.states_of(2) == {"unknown"}


def test_a_healed_partition_merges_back_by_itself():
    net = mesh_of(4, Config.local())
    net.run(2)
    net.partition([0, 1], [2, 3])
    net.run_until(lambda: net.view(0).get(ident(2).node_id) == "dead"
                  and net.view(2).get(ident(0).node_id) == "dead", limit=10)
    net.run(5)  # long enough that nothing but the reconnects could bring them back
    net.heal()
    everyone = {ident(n).node_id for n in range(4)}
    net.run_until(lambda: all(set(net.view(n)) == everyone and set(net.view(n).values()) == {"alive"}
                              for n in range(4)), limit=10)


def test_revocation_removes_the_member_everywhere_and_its_updates_are_ignored():
    net = mesh_of(4)
    net.run(3)
    victim = ident(3).node_id
    admin_host = net.nodes[net.addr(0)]
    from mesh.core.membership.messages import RevokeUpdate
    admin_host.admit(RevokeUpdate(issue_revocation(ADMIN, victim, net.now)), net.now)
    net.kill(3)
    net.run(3)
    assert net.states_of(3) == {"unknown"}
    assert all(c.admission.status(victim) == "revoked" for a, c in net.nodes.items() if a not in net.down)
    core = net.nodes[net.addr(1)]
    core.receive(ident(0).node_id, net.addr(0),
                 Datagram(None, (Alive(victim, 99, net.addr(3), "x"),)), net.now)
    assert core.member(victim) is None and core.ignored["revoked_member"] >= 1


def test_events_report_join_suspect_and_dead():
    net = mesh_of(3)
    net.run(2)
    watcher = net.nodes[net.addr(0)]
    kinds = {e.kind for e in watcher.drain_events()}
    assert "joined" in kinds
    net.kill(1)
    net.run_until(lambda: net.states_of(1) == {"dead"}, limit=6)
    kinds = [e.kind for e in watcher.drain_events() if e.member.id == ident(1).node_id]
    assert kinds[-1] == "dead" and ("suspect" in kinds or kinds == ["dead"])


def test_lifeguard_a_slow_member_raises_its_own_awareness_not_false_deaths():
    """A host whose every incoming datagram is late misses acks; it stretches its own timeouts
    and the healthy members it suspects refute, so nobody healthy is declared dead."""
    net = mesh_of(5, Config.lan())
    net.run(3)
    net.slow[net.addr(4)] = 0.3  # more than the probe timeout, less than the probe interval
    scores = []
    for _ in range(40):
        net.run(0.5)
        scores.append(net.nodes[net.addr(4)].awareness.score)
    assert max(scores) >= 1
    for i in range(4):
        assert net.states_of(i) == {"alive"}, f"healthy member {i} is not alive everywhere"


def test_lossy_network_still_converges_and_detects():
    net = mesh_of(6, Config.lan(), loss=0.1, seed=7)
    net.run_until(lambda: all_alive(net, 6), limit=20)
    net.kill(5)
    net.run_until(lambda: net.states_of(5) == {"dead"}, limit=15)
    assert all(net.states_of(i) == {"alive"} for i in range(5))
