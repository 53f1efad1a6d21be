"""Suspicion maths, awareness, the broadcast queue and the wire types, each on its own."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.codec import pack, unpack
from mesh.core.membership import Config, Datagram, PushPull
from mesh.core.membership.awareness import Awareness
from mesh.core.membership.messages import Ack, Alive, Dead, MemberRecord, Nack, Ping, PingReq, Suspect
from mesh.core.membership.queue import BroadcastQueue, retransmit_limit
from mesh.core.membership.suspicion import expected_confirmations, suspicion_deadline, suspicion_timeouts
from mesh.errors import ProtocolError

NODE = "ab" * 20
OTHER = "cd" * 20


@pytest.mark.parametrize("members,interval,low,high", [
    (1, 1.0, 3.0, 6.0), (5, 1.0, 3.0, 6.0), (10, 1.0, 3.0, 6.0), (100, 0.5, 3.0, 6.0), (1000, 1.0, 9.0, 18.0)])
def test_suspicion_timeouts_scale_with_log_of_members(members, interval, low, high):
    assert suspicion_timeouts(3.0, 2.0, members, interval) == pytest.approx((low, high))


@pytest.mark.parametrize("expected,confirmations,timeout", [
    (0, 0, 2.0), (3, 0, 10.0), (3, 1, 10 - 8 * math.log(2) / math.log(4)), (3, 2, 10 - 8 * math.log(3) / math.log(4)),
    (3, 3, 2.0), (3, 7, 2.0), (1, 1, 2.0)])
def test_suspicion_deadline_falls_from_max_to_min_with_confirmations(expected, confirmations, timeout):
    assert suspicion_deadline(100.0, 2.0, 10.0, expected, confirmations) == pytest.approx(100.0 + timeout)


@given(st.integers(0, 10), st.integers(0, 20), st.floats(0.1, 10), st.floats(1, 5))
def test_suspicion_deadline_is_monotone_and_bounded(expected, confirmations, low, mult):
    high = low * mult
    d = suspicion_deadline(0.0, low, high, expected, confirmations)
    assert low - 1e-9 <= d <= high + 1e-9
    assert suspicion_deadline(0.0, low, high, expected, confirmations + 1) <= d + 1e-9


def test_expected_confirmations_leave_out_us_and_the_suspect():
    assert [expected_confirmations(3, n) for n in (1, 2, 3, 4, 5, 50)] == [0, 0, 1, 2, 3, 3]


def test_awareness_is_bounded_and_scales_timeouts():
    a = Awareness(4)
    a.apply(-5)
    assert a.multiplier == 1
    for _ in range(10):
        a.apply(+1)
    assert a.multiplier == 4 and a.scale(0.5) == 2.0
    a.apply(-1)
    assert a.scale(1.0) == 3.0


def test_queue_sends_each_update_a_bounded_number_of_times():
    q: BroadcastQueue[str] = BroadcastQueue(retransmit_mult=3, max_items=10)
    q.push("x", "update-x")
    sends = 0
    while q.take(members=50, budget=1000, size=len):
        sends += 1
    assert sends == retransmit_limit(3, 50) == 3 * 2


def test_queue_newer_update_replaces_older_and_fewest_sent_go_first():
    q: BroadcastQueue[str] = BroadcastQueue(retransmit_mult=4, max_items=10)
    q.push("a", "a1")
    q.take(10, 1000, len)
    q.push("b", "b1")
    q.push("a", "a2")
    assert q.take(10, 1000, len) == ["a2", "b1"]
    assert q.take(10, 2, len) == ["a2"]  # budget in bytes: only one fits


def test_queue_is_bounded():
    q: BroadcastQueue[int] = BroadcastQueue(retransmit_mult=4, max_items=3)
    for i in range(10):
        q.push(i, i)
    assert len(q) == 3 and q.dropped == 7 and sorted(q.pending()) == [7, 8, 9]


def test_profiles_are_valid_and_ordered():
    lan, wan, local = Config.lan(), Config.wan(), Config.local()
    assert local.probe_interval < lan.probe_interval < wan.probe_interval
    assert lan.cross_gossip_interval > lan.gossip_interval and lan.cross_gossip_nodes < lan.gossip_nodes
    with pytest.raises(ValueError):
        Config(probe_interval=1.0, probe_timeout=0.8)


addrs = st.tuples(st.text("abc.0123", min_size=1, max_size=20), st.integers(1, 65535))
node_ids = st.sampled_from([NODE, OTHER])
incs = st.integers(0, 2**40)
controls = st.one_of(st.none(), st.builds(Ping, incs, node_ids), st.builds(PingReq, incs, node_ids, addrs),
                     st.builds(Ack, incs), st.builds(Nack, incs))
updates = st.one_of(st.builds(Alive, node_ids, incs, addrs, st.text(max_size=30)),
                    st.builds(Suspect, node_ids, incs, node_ids), st.builds(Dead, node_ids, incs, node_ids))


@given(controls, st.lists(updates, max_size=10))
def test_datagram_round_trips_through_msgpack(control, ups):
    d = Datagram(control, tuple(ups))
    assert Datagram.from_wire(unpack(pack(d.to_wire()), 1 << 20)) == d


@given(st.lists(st.builds(MemberRecord, node_ids, incs, st.sampled_from(["alive", "suspect", "dead", "left"]),
                          addrs, st.text(max_size=30)), max_size=5))
def test_push_pull_round_trips(records):
    p = PushPull(tuple(records), (), ())
    assert PushPull.from_wire(unpack(pack(p.to_wire()), 1 << 20)) == p


wire_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=45),
              st.binary(max_size=70), st.sampled_from(["ping", "ping_req", "ack", "nack", "alive", "suspect",
                                                      "dead", "cert", "revoke", NODE])),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30)


@given(wire_values)
def test_any_garbage_is_a_protocol_error_or_a_valid_message(obj):
    for decode in (Datagram.from_wire, PushPull.from_wire):
        try:
            decoded = decode(obj)
        except ProtocolError:
            continue
        assert type(decoded).from_wire(decoded.to_wire()) == decoded


@given(st.lists(wire_values, min_size=2, max_size=2).map(lambda xs: ["ack", *xs][:2]))
def test_shaped_garbage_in_controls(control):
    try:
        Datagram.from_wire([control, [control]])
    except ProtocolError as exc:
        assert exc.reason in ("bad_message", "bad_certificate", "bad_revocation")
