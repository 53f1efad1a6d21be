"""GossipService on real sockets (127.0.0.x, the local profile): join, convergence, death, restart, revoke."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from mesh.core.membership import MemberState
from mesh.errors import Conflict, InvalidRequest, Unauthorized, Unavailable
from mesh.runtime.gossip import ADMIN_KEY_FILE, MESH_DIR, GossipService, ReplayWindow, TokenBucket
from tests.membership.runtime_helpers import close_all, mesh, service, state_of, states, wait_for


def run(coro):
    return uvloop.run(coro)


def test_five_members_join_with_a_token_and_converge(tmp_path):
    async def main():
        services = await mesh(tmp_path, 5, clusters=("a", "b"))
        try:
            first = services[0]
            view = {m.id: m for m in first.members()}
            for i, s in enumerate(services):
                m = view[s.id]
                assert (m.cluster, m.role, m.gossip, m.http) == (
                    ("a", "b")[i % 2], "master", s.address, f"http://127.0.0.{i + 1}:8080")
                assert m.state == MemberState.ALIVE
            assert all(s.mesh_id == first.mesh_id for s in services)
            assert (tmp_path / "host0" / MESH_DIR / ADMIN_KEY_FILE).exists()
            assert not (tmp_path / "host1" / MESH_DIR / ADMIN_KEY_FILE).exists()
            await asyncio.sleep(0.5)
            assert any(m.rtt is not None for m in services[1].members() if m.id != services[1].id)
            # every member has an RTT estimate from every other (direct, or Vivaldi coordinates)
            await wait_for(lambda: all(m.rtt_estimate is not None and s.rtt(s.id, m.id) == m.rtt_estimate
                                       for s in services for m in s.members() if m.id != s.id), 5, "estimates")
            # every member holds every other's coordinate and measured round trips moved its own off the
            # origin (how well they fit is for the virtual-clock tests: loopback RTTs are mostly jitter)
            await wait_for(lambda: all(s.core is not None and any(s.core.coordinates.local.vec)
                                       and all(s.core.coordinates.get(t.id) is not None for t in services if t is not s)
                                       for s in services), 5, "coordinates")
            kinds = {e.kind for e in first.drain_events()}
            assert "joined" in kinds
        finally:
            await close_all(services)
    run(main())


def test_a_closed_member_is_seen_dead_and_a_leaving_one_left(tmp_path):
    async def main():
        services = await mesh(tmp_path, 4)
        try:
            crashed, leaving, rest = services[3], services[2], services[:2]
            await crashed.close()
            took = await wait_for(lambda: state_of(services[:3], crashed.id) == {"dead"}, 5, "death")
            assert took < 3
            await leaving.leave()
            await wait_for(lambda: state_of(rest, leaving.id) == {"left"}, 3, "left")
            assert state_of(rest, rest[0].id) == state_of(rest, rest[1].id) == {"alive"}
        finally:
            await close_all(services)
    run(main())


def test_restart_rejoins_with_a_higher_incarnation_and_the_same_identity(tmp_path):
    async def main():
        services = await mesh(tmp_path, 3)
        try:
            old = services[2]
            before = old.incarnation
            await old.close()
            await wait_for(lambda: state_of(services[:2], old.id) == {"dead"}, 5, "death")
            again = service(tmp_path, 2)
            services[2] = again
            await again.start(new_mesh=False)  # no token, no seeds: its saved peers and certificate
            assert again.id == old.id and again.incarnation > before and again.joined
            await wait_for(lambda: state_of(services, again.id) == {"alive"}, 5, "rejoin")
            assert {m.incarnation for s in services for m in s.members() if m.id == again.id} == {again.incarnation}
        finally:
            await close_all(services)
    run(main())


def test_revoke_removes_a_member_and_its_messages_are_dropped(tmp_path):
    async def main():
        services = await mesh(tmp_path, 4)
        try:
            admin, victim = services[0], services[3]
            with pytest.raises(Unauthorized):
                services[1].revoke(victim.id)
            with pytest.raises(InvalidRequest):
                admin.revoke("abc")
            assert admin.revoke(victim.id[:10]) == victim.id
            assert admin.info()["admin"] and not services[1].info()["admin"]
            others = services[:3]
            await wait_for(lambda: state_of(others, victim.id) == {"unknown"}, 5, "revocation")
            await wait_for(lambda: sum(s.drops.get("revoked", 0) for s in others) > 0, 5, "revoked drops")
            await asyncio.sleep(0.3)
            assert state_of(others, victim.id) == {"unknown"}
        finally:
            await close_all(services)
    run(main())


def test_bad_tokens_and_joins_are_refused(tmp_path):
    async def main():
        first = service(tmp_path, 0)
        await first.start()
        other = service(tmp_path, 5)
        await other.start()  # a mesh of its own
        joiner = service(tmp_path, 1)
        await joiner.start(new_mesh=False)
        try:
            with pytest.raises(Unauthorized, match="another mesh"):
                await joiner.join([first.address], other.make_token())
            with pytest.raises(Unauthorized, match="malformed"):
                await joiner.join([first.address], "nope")
            assert not joiner.joined and joiner.members() == []
            host, port = first.address
            await joiner.join([f"{host}:{port}"], first.make_token())
            assert joiner.joined and joiner.info()["members"]["alive"] >= 1
            late = service(tmp_path, 3)
            await late.start(new_mesh=False)
            with pytest.raises(Unavailable, match="cannot admit"):  # only the admin host admits
                await late.join([joiner.address], first.make_token())
            await late.join([joiner.address, first.address], first.make_token())  # falls through to the admin
            assert late.mesh_id == first.mesh_id
            await late.close()
            with pytest.raises(Conflict):
                await joiner.join([other.address], other.make_token())
            # a host that made its own mesh but is alone may still join another one
            await other.join([first.address], first.make_token())
            assert other.mesh_id == first.mesh_id
            assert not (tmp_path / "host5" / MESH_DIR / ADMIN_KEY_FILE).exists()
            ids = {first.id, joiner.id, other.id, late.id}
            await wait_for(lambda: ids - {late.id} <= set(states(first)) <= ids, 5, "all joined")
        finally:
            await close_all([first, other, joiner])
    run(main())


def test_replay_window_accepts_each_sequence_once_and_tolerates_reordering():
    w = ReplayWindow(size=8)
    assert [w.accept(s) for s in (5, 3, 5, 3, 4, 13, 6, 5, 2**40, 2**40 - 3, 1)] == [
        True, True, False, False, True, True, True, False, True, True, False]


def test_token_bucket_limits_a_sender():
    b = TokenBucket(rate=10, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.1) and not b.take(0.1)


def test_service_without_data_dir_and_unknown_stream_kind(tmp_path):
    async def main():
        from mesh.core.identity import Identity
        from mesh.core.membership import Config
        s = GossipService(Identity(b"z" * 32), Config.local(), ("127.0.0.9", 0), "a", "store", "http://x")
        await s.start()
        try:
            reader, writer = await asyncio.open_connection(*s.address)
            from mesh.core.codec import seal
            from mesh.runtime.gossip import read_frame, write_frame
            write_frame(writer, seal(Identity(b"y" * 32), "nope", 1, {}))
            await writer.drain()
            with pytest.raises(asyncio.IncompleteReadError):
                await read_frame(reader)
            writer.close()
            await wait_for(lambda: s.drops.get("unknown_kind") == 1, 2)
        finally:
            await s.close()
    run(main())


@pytest.mark.slow
def test_default_profile_sees_a_crashed_master_dead_everywhere_within_5_seconds(tmp_path):
    from mesh.core.membership import Config

    async def main():
        first = service(tmp_path, 0, config=Config.lan())
        await first.start()
        token = first.make_token()
        services = [first]
        for i in range(1, 5):
            s = service(tmp_path, i, config=Config.lan())
            await s.start(new_mesh=False)
            await s.join([first.address], token)
            services.append(s)
        try:
            ids = {s.id for s in services}
            await wait_for(lambda: all(states(s) == dict.fromkeys(ids, "alive") for s in services), 10)
            victim = services[2]
            await victim.close()
            rest = [s for s in services if s is not victim]
            took = await wait_for(lambda: state_of(rest, victim.id) == {"dead"}, 5, "death under 5 s")
            assert took < 5
        finally:
            await close_all(services)
    run(main())


def test_a_member_that_missed_a_certificate_broadcast_learns_it_from_a_peer(tmp_path):
    """The admin's broadcast of a new member's certificate can miss a member (a small mesh
    retransmits it only a few times); that member then drops every datagram of the newcomer. It
    must fetch the certificates from a live peer at once, not wait for the 30 s push-pull."""
    from mesh.core.membership import Config

    async def main():
        first = service(tmp_path, 0, config=Config.lan())
        await first.start()
        token = first.make_token()
        second = service(tmp_path, 1, config=Config.lan())
        await second.start(new_mesh=False)
        await second.join([first.address], token)
        services = [first, second]
        try:
            await wait_for(lambda: all(len(states(s)) == 2 for s in services), 10, "two members")
            third = service(tmp_path, 2, config=Config.lan())
            await third.start(new_mesh=False)
            first.core.queue.push = lambda subject, update: None  # its broadcasts about the newcomer are lost
            try:
                await third.join([first.address], first.make_token())
            finally:
                del first.core.queue.push
            services.append(third)
            assert second.admission.status(third.id) == "unadmitted"
            await wait_for(lambda: states(second).get(third.id) == "alive", 5, "the newcomer known")
            assert second.admission.status(third.id) == "admitted"
        finally:
            await close_all(services)
    run(main())
