"""Vivaldi coordinates wired through the real membership core: probes on a virtual clock over a
network with known pairwise RTTs, the wire forms, mixed versions, and the RTT source the fetch
runtime uses."""

from __future__ import annotations

import math
import random
import statistics
import struct
from types import SimpleNamespace

import pytest

from mesh.core.codec import pack, unpack
from mesh.core.costs import DEFAULT_RTT, CostModel, Host, LinkClass, PriceTable
from mesh.core.membership import Config, Datagram, PushPull
from mesh.core.membership.messages import Ack, Addr, MemberRecord, Ping, control_from_wire
from mesh.core.vivaldi import Coordinate, VivaldiConfig
from mesh.errors import ProtocolError
from mesh.runtime.fetch import MeshRemote
from mesh.runtime.gossip import GossipService
from tests.membership.simnet import SimNet, ident

DIMS = VivaldiConfig().dimensions


def world(n: int, seed: int) -> dict[int, tuple[float, float, float]]:
    """Hosts in three regions on a plane (seconds), each with its own access delay: true RTT of
    a pair = distance + both heights (20 ms to 150 ms across regions, ~1 ms to 8 ms inside one)."""
    rng = random.Random(seed)
    centres = [(0.0, 0.0), (0.07, 0.0), (0.02, 0.11)]
    return {i: (centres[i % 3][0] + rng.uniform(-0.003, 0.003), centres[i % 3][1] + rng.uniform(-0.003, 0.003),
                rng.uniform(0.0003, 0.002)) for i in range(n)}


def true_rtt(truth: dict[int, tuple[float, float, float]], i: int, j: int) -> float:
    p, q = truth[i], truth[j]
    return math.dist(p[:2], q[:2]) + p[2] + q[2]


def shaped_net(n: int, seed: int = 1, config: Config | None = None) -> tuple[SimNet, dict]:
    truth = world(n, seed)
    index = {f"10.0.0.{i}": i for i in range(n + 1)}

    def one_way(src: Addr, dst: Addr) -> float:
        return true_rtt(truth, index[src[0]], index[dst[0]]) / 2

    net = SimNet(config or Config.lan(), seed=seed, one_way=one_way)
    for i in range(n):
        net.add(i, cluster=f"r{i % 3}")
    return net, truth


def relative_errors(pairs, estimate, truth) -> list[float]:
    return [abs(estimate(a, b) - true_rtt(truth, a, b)) / true_rtt(truth, a, b) for a, b in pairs]


def test_probes_through_the_core_give_estimates_for_pairs_nobody_here_probed():
    n = 15
    net, truth = shaped_net(n)
    net.run(120)
    for obs in (0, 7):
        core = net.nodes[net.addr(obs)]
        others = [i for i in range(n) if i != obs]
        # member to member: only the two members' gossiped coordinates, never probed by ``core``
        pairs = [(a, b) for a in others for b in others if a < b]
        errors = relative_errors(pairs, lambda a, b, c=core: c.rtt(ident(a).node_id, ident(b).node_id), truth)
        assert statistics.median(errors) < 0.25, statistics.median(errors)
        # and every member has an estimate from here (the direct one where the core probed it)
        infos = {m.id: m for m in core.members()}
        for i in others:
            m = infos[ident(i).node_id]
            assert m.rtt_estimate is not None and m.rtt_estimate == m.rtt
            assert m.rtt == pytest.approx(true_rtt(truth, obs, i), rel=1e-6)
        # our own coordinate against a member's: the Vivaldi distance, as a fallback would give it
        vivaldi = relative_errors([(obs, i) for i in others],
                                  lambda a, b, c=core: c.coordinates.rtt(ident(a).node_id, ident(b).node_id,
                                                                         me=c.id), truth)
        assert statistics.median(vivaldi) < 0.25
        assert core.ignored.get("coordinate_dimensions", 0) == 0


def test_the_same_seed_gives_the_same_coordinates():
    def run() -> list:
        net, _ = shaped_net(6, seed=3)
        net.run(20)
        return [c.coordinates.local for c in net.nodes.values()]

    assert run() == run()


def test_a_new_member_knows_every_coordinate_from_its_join_push_pull():
    n = 12
    net, truth = shaped_net(n + 1)  # host n exists in the truth table but joins later
    net.nodes.pop(net.addr(n))
    net.run(90)
    newcomer = net.add(n, cluster="r0")  # a push-pull with host 0, nothing probed yet
    assert all(m.rtt is None for m in newcomer.members() if m.id != newcomer.id)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    errors = relative_errors(pairs, lambda a, b: newcomer.rtt(ident(a).node_id, ident(b).node_id), truth)
    assert statistics.median(errors) < 0.25
    # its own coordinate is still the origin: an estimate, if a poor one, for every member
    assert all(m.rtt_estimate is not None for m in newcomer.members() if m.id != newcomer.id)
    net.run(60)
    vivaldi = relative_errors([(n, i) for i in range(n)],
                              lambda a, b: newcomer.coordinates.rtt(ident(a).node_id, ident(b).node_id,
                                                                    me=ident(n).node_id), truth)
    assert statistics.median(vivaldi) < 0.25


def test_rtt_prefers_the_direct_probe_then_vivaldi_then_none():
    net, _ = shaped_net(6)
    net.run(30)
    core = net.nodes[net.addr(0)]
    me, a, b = core.id, ident(1).node_id, ident(2).node_id
    direct = core.member(a).rtt
    assert direct is not None and core.rtt(me, a) == direct == core.rtt(a, me)
    assert core.rtt(me, me) == 0.0
    assert core.rtt(a, b) == core.coordinates.rtt(a, b) != core.member(a).rtt
    core._members[a].rtt = None  # as for a member this host has not probed (yet)
    fallback = core.coordinates.rtt(me, a, me=me)
    assert core.rtt(me, a) == fallback and core.member(a).rtt_estimate == fallback
    core.coordinates.forget(a)
    assert core.rtt(me, a) is None and core.rtt(a, b) is None and core.member(a).rtt_estimate is None
    assert core.rtt(me, "not-a-member") is None


def test_an_older_member_is_never_sent_a_coordinate_and_stays_alive():
    net, _ = shaped_net(5)
    old = net.addr(4)
    old_core = net.nodes[old]
    # an older version: it gossips no coordinate (so nobody ever holds one of it); it would drop a
    # ping or ack with one, which this test checks it never gets
    old_core._coordinate_for = lambda node: None
    plain = old_core.local_state

    def local_state() -> PushPull:
        s = plain()
        return PushPull(tuple(MemberRecord(r.node, r.incarnation, r.state, r.gossip, r.http) for r in s.members),
                        s.certificates, s.revocations)

    old_core.local_state = local_state
    for core in net.nodes.values():
        core.coordinates.forget(old_core.id)
        core._firsthand.discard(old_core.id)
    net.sent.clear()
    net.run(40)
    to_old = [d for _, dst, d in net.sent if dst == old and d.control is not None]
    assert to_old and all(getattr(d.control, "coordinate", None) is None for d in to_old)
    assert all(getattr(d.control, "coordinate", None) is None for src, _, d in net.sent if src == old)
    others = [c for a, c in net.nodes.items() if a != old]
    for core in others:
        assert core.coordinates.get(old_core.id) is None
        assert {m.state.value for m in core.members()} == {"alive"}
        info = core.member(old_core.id)
        assert info.rtt_estimate == info.rtt is not None  # direct probes still measure it
    # the new members did exchange coordinates among themselves
    assert any(getattr(d.control, "coordinate", None) is not None for src, dst, d in net.sent
               if old not in (src, dst))


def test_a_coordinate_of_another_dimension_is_ignored_and_the_ack_still_counts():
    net, _ = shaped_net(3)
    net.run(10)
    core = net.nodes[net.addr(0)]
    target = ident(1).node_id
    core.handle_timer(core._next_probe["local"] + 100)  # start probes now
    probe = core._probes["local"] or core._probes["cross"]
    assert probe is not None
    odd = Coordinate((0.01,) * 4, 0.001, 0.5)
    sender = probe.target
    core.receive(sender, net.addr(1) if sender == target else net.addr(2), Datagram(Ack(probe.probe, odd)),
                 probe.sent + 0.05)
    assert core.ignored["coordinate_dimensions"] == 1
    assert core._probes[probe.pool] is None  # the ack counted
    assert core.coordinates.get(sender) != odd


# -- wire ------------------------------------------------------------------------------------------

COORD = Coordinate.from_wire(Coordinate(tuple(0.001 * i for i in range(DIMS)), 0.0005, 0.4).to_wire())  # float32


def roundtrip(obj):
    return unpack(pack(obj), 1 << 20)


def test_ping_and_ack_with_and_without_a_coordinate_round_trip():
    node = ident(1).node_id
    for msg in (Ping(3, node), Ping(3, node, COORD), Ack(4), Ack(4, COORD)):
        assert control_from_wire(roundtrip(msg.to_wire())) == msg
    assert len(pack(Ack(4, COORD).to_wire())) - len(pack(Ack(4).to_wire())) == 2 + 4 * (DIMS + 2)
    assert Ping(3, node).to_wire() == ["ping", 3, node]  # the shape an older member reads
    assert Ack(4).to_wire() == ["ack", 4]


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


BAD_COORDINATES = [
    None, "x" * 40, 1.5, [[0.0] * DIMS, 0.001, 0.1],  # not bytes (the last: a list of floats)
    b"", f32(0.001, 0.1), f32(0.001, 0.1, *[0.0] * 33), f32(0.001, 0.1, *[0.0] * DIMS)[:-1],  # sizes
    f32(0.001, 0.1, *[0.0] * (DIMS - 1), math.nan), f32(0.001, 0.1, *[0.0] * (DIMS - 1), math.inf),
    f32(0.001, 0.1, *[0.0] * (DIMS - 1), -math.inf), f32(math.nan, 0.1, *[0.0] * DIMS),
    f32(0.001, 0.1, *[0.0] * (DIMS - 1), 1e5), f32(1e30, 0.1, *[0.0] * DIMS),  # magnitude
    f32(-0.001, 0.1, *[0.0] * DIMS), f32(0.001, -0.1, *[0.0] * DIMS),  # negative height or error
]


@pytest.mark.parametrize("bad", BAD_COORDINATES, ids=range(len(BAD_COORDINATES)))
def test_a_malformed_coordinate_is_a_protocol_error_everywhere_it_travels(bad):
    node = ident(1).node_id
    if bad is not None:  # None is "no coordinate" where the field is optional
        for wire in (["ping", 3, node, bad], ["ack", 4, bad]):
            with pytest.raises(ProtocolError):
                Datagram.from_wire([wire, []])
    with pytest.raises(ProtocolError):
        PushPull.from_wire({"members": [MemberRecord(node, 1, "alive", ("h", 1), "").to_wire()],
                            "certificates": [], "revocations": [], "coordinates": [[0, bad]]})


def test_push_pull_records_carry_coordinates_and_one_without_is_accepted():
    a, b = ident(1).node_id, ident(2).node_id
    records = (MemberRecord(a, 1, "alive", ("h", 1), "http://a", COORD), MemberRecord(b, 2, "suspect", ("h", 2), ""))
    state = PushPull(records, (), ())
    wire = roundtrip(state.to_wire())
    assert wire["members"] == [r.to_wire() for r in records]  # records keep the shape an older member reads
    assert PushPull.from_wire(wire) == state
    old = {k: v for k, v in wire.items() if k != "coordinates"}  # from a member that predates coordinates
    assert PushPull.from_wire(old).members == (MemberRecord(a, 1, "alive", ("h", 1), "http://a"), records[1])
    assert "coordinates" not in PushPull(records[1:], (), ()).to_wire()


@pytest.mark.parametrize("coordinates", [
    "x", [[0]], [[0, COORD.to_wire(), 1]], [[2, COORD.to_wire()]], [[-1, COORD.to_wire()]],
    [[True, COORD.to_wire()]], [[0, COORD.to_wire()], [0, COORD.to_wire()]],
    [[0, COORD.to_wire()], [1, COORD.to_wire()], [1, COORD.to_wire()]],
])
def test_a_bad_push_pull_coordinate_list_is_a_protocol_error(coordinates):
    records = [MemberRecord(ident(i).node_id, 1, "alive", ("h", i + 1), "").to_wire() for i in range(2)]
    with pytest.raises(ProtocolError):
        PushPull.from_wire({"members": records, "certificates": [], "revocations": [], "coordinates": coordinates})


def test_push_pull_coordinates_fit_a_full_state():
    records = tuple(MemberRecord(ident(i).node_id, 1, "alive", ("h", i + 1), "", COORD) for i in range(100))
    wire = PushPull(records, (), ()).to_wire()
    assert PushPull.from_wire(roundtrip(wire)).members == records


# -- the runtime's RTT source ------------------------------------------------------------------------

def test_the_cost_model_of_the_fetch_runtime_uses_the_estimate_for_a_holder_never_probed():
    net, truth = shaped_net(6)
    net.run(60)
    core = net.nodes[net.addr(0)]
    gossip = SimpleNamespace(rtt=lambda a, b: GossipService.rtt(SimpleNamespace(core=core), a, b))
    remote = SimpleNamespace(gossip=gossip, id=core.id)
    model = CostModel(PriceTable(), rtt=lambda a, b: MeshRemote._rtt(remote, a, b))
    me = Host(core.id, "r0")
    probed, unprobed = ident(3), ident(1)
    assert model.rtt(me, Host(probed.node_id, "r0")) == core.member(probed.node_id).rtt
    core._members[unprobed.node_id].rtt = None  # a holder this host never probed directly
    estimate = model.rtt(me, Host(unprobed.node_id, "r1"))
    assert estimate == core.coordinates.rtt(core.id, unprobed.node_id, me=core.id)
    assert estimate != DEFAULT_RTT[LinkClass.INTERNET]
    assert abs(estimate - true_rtt(truth, 0, 1)) / true_rtt(truth, 0, 1) < 0.35
    assert GossipService.rtt(SimpleNamespace(core=None), core.id, unprobed.node_id) is None


def test_a_member_downgraded_to_an_older_version_gets_plain_pings_and_stays_alive():
    net, _ = shaped_net(5)
    net.run(20)
    old = net.addr(4)
    old_core = net.nodes[old]
    assert all(c.coordinates.get(old_core.id) is not None for a, c in net.nodes.items() if a != old)
    # restarted as an older version (same incarnation, no one noticed): it drops what it cannot parse
    old_core._coordinate_for = lambda node: None
    plain_state, plain_receive = old_core.local_state, old_core.receive

    def local_state() -> PushPull:
        s = plain_state()
        return PushPull(tuple(MemberRecord(r.node, r.incarnation, r.state, r.gossip, r.http) for r in s.members),
                        s.certificates, s.revocations)

    def receive(sender, addr, msg, now) -> None:
        if getattr(msg.control, "coordinate", None) is None:
            plain_receive(sender, addr, msg, now)

    old_core.local_state, old_core.receive = local_state, receive
    net.run(30)
    others = [c for a, c in net.nodes.items() if a != old]
    assert all(old_core.id in c._plain for c in others)  # each missed ack made it a plain-ping member
    net.sent.clear()
    incarnation = old_core.incarnation
    net.run(30)
    assert not [d for _, dst, d in net.sent if dst == old and getattr(d.control, "coordinate", None) is not None]
    assert old_core.incarnation == incarnation  # no more suspicions to refute
    for core in others + [old_core]:
        assert {m.state.value for m in core.members()} == {"alive"}
