"""Every message kind in every state: the core raises nothing but ProtocolError and keeps its invariants."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.core.admission import issue_certificate, issue_revocation
from mesh.core.membership import Config, Datagram, MemberState
from mesh.core.membership.messages import (
    Ack,
    Alive,
    CertUpdate,
    Dead,
    MemberRecord,
    Nack,
    Ping,
    PingReq,
    PushPull,
    RevokeUpdate,
    Suspect,
)
from tests.membership.simnet import ADMIN, SimNet, ident

IDS = [ident(i).node_id for i in range(6)] + ["ee" * 20]  # host 6 is never admitted
ADDRS = [(f"10.0.0.{i}", 7946) for i in range(7)]
node = st.sampled_from(IDS)
addr = st.sampled_from(ADDRS)
inc = st.integers(0, 12)
probe = st.integers(0, 40)
update = st.one_of(
    st.builds(Alive, node, inc, addr, st.just("http://x")),
    st.builds(Suspect, node, inc, node),
    st.builds(Dead, node, inc, node),
    st.builds(lambda i: CertUpdate(issue_certificate(ADMIN, ident(i).public_key, "a", "master", 1.0)),
              st.integers(0, 7)),
    st.builds(lambda i: RevokeUpdate(issue_revocation(ADMIN, IDS[i], 1.0)), st.integers(1, 6)),
)
control = st.one_of(st.none(), st.builds(Ping, probe, node), st.builds(PingReq, probe, node, addr),
                    st.builds(Ack, probe), st.builds(Nack, probe))
step = st.one_of(
    st.tuples(st.just("recv"), st.integers(1, 5), control, st.lists(update, max_size=4)),
    st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
    st.tuples(st.just("pushpull"), st.integers(1, 5),
              st.lists(st.builds(MemberRecord, node, inc, st.sampled_from(["alive", "suspect", "dead", "left"]),
                                 addr, st.just("h")), max_size=5)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=30))
def test_any_sequence_of_messages_keeps_the_invariants(steps):
    net = SimNet(Config.lan())
    for i in range(4):
        net.add(i)
    net.run(1.0)
    core = net.nodes[net.addr(0)]
    last_inc = core.incarnation
    for s in steps:
        if s[0] == "recv":
            core.receive(IDS[s[1]], ADDRS[s[1]], Datagram(s[2], tuple(s[3])), net.now)
        elif s[0] == "tick":
            net.now += s[1]
            deadline = core.next_deadline()
            assert deadline is not None
            for _ in range(5):  # each round moves every due deadline forward
                if core.next_deadline() > net.now:
                    break
                core.handle_timer(net.now)
            assert core.next_deadline() > net.now
        else:
            core.merge_state(IDS[s[1]], PushPull(tuple(s[2]), (), ()), net.now)
        for out in core.drain():
            assert hasattr(out, "addr")
        me = core.member(core.id)
        assert me is not None and me.state == MemberState.ALIVE
        assert core.incarnation >= last_inc
        last_inc = core.incarnation
        ids = {m.id for m in core.members()}
        assert IDS[-1] not in ids  # never admitted, never a member
        assert all(core.admission.status(i) == "admitted" for i in ids)
