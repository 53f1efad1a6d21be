"""IssuerService under faults: whole-mesh restart from records, bounded failure naming the home and the
unreachable replicas, queued commits issued after the partition heals, malformed and stale frames dropped."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from mesh.errors import ReplicasUnreachable
from mesh.runtime.gossip import write_frame
from mesh.runtime.issuance import CommitQueued, PendingCommits, queue_commits
from mesh.runtime.issuance_store import PendingStore
from tests.issuance_runtime.helpers import SETTINGS, close_all, draft, heal, make_mesh, partition, wait_for

THREE = [("a", "master"), ("b", "master"), ("c", "master")]


def run(coro):
    return uvloop.run(coro)


async def stream_frames(target, frames):
    """Write raw frames on one connection to ``target``'s gossip port; it must close it, never answer."""
    reader, writer = await asyncio.open_connection(*target.gossip.address)
    for f in frames:
        write_frame(writer, f)
    await writer.drain()
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()


def test_every_master_crashes_and_restarts_and_the_counters_continue(tmp_path):
    async def main():
        hosts = await make_mesh(tmp_path, THREE)
        try:
            for i in range(5):
                assert (await hosts[i % 3].issue(draft("r/k", f"a{i}"))).version == i + 1
            epoch = hosts[0].service.roster.epoch
            for h in hosts:
                await h.crash()
            for h in hosts:
                await h.start()
            ids = {h.id for h in hosts}
            await wait_for(lambda: all(h.service._live == ids for h in hosts), 10, "rejoin")
            assert {h.service.roster.epoch for h in hosts} == {epoch}
            m = await hosts[1].issue(draft("r/k", "after"))
            assert (m.version, m.parent) == (6, 5)
            assert len(hosts[0].service.store.accepted("r/k")) >= 5
        finally:
            await close_all(hosts)
    run(main())


def test_a_cut_off_master_fails_in_bounded_time_then_its_queued_commit_is_issued(tmp_path):
    async def main():
        hosts = await make_mesh(tmp_path, THREE + [("a", "master")])
        lonely = hosts[0]
        service = lonely.service
        learned = []

        async def on_issued(manifest):
            learned.append(manifest)

        pending = PendingCommits(PendingStore(lonely.meta), service.issue, on_issued, service.reachable,
                                 retry_interval=0.2)
        await pending.start()
        try:
            assert (await lonely.issue(draft("q/k", "before"))).version == 1
            partition(hosts, {0, 3})  # cluster a (two masters; a single one could not re-merge, see helpers.heal)
            await wait_for(lambda: service._live == {lonely.id, hosts[3].id}, 10, "the others seen dead")
            start = time.monotonic()
            with pytest.raises(ReplicasUnreachable) as info:
                await lonely.issue(draft("q/k", "cut"))
            assert time.monotonic() - start < SETTINGS.commit_timeout + 1.0
            text = str(info.value)
            assert "home" in text and "unreachable: [" in text
            assert hosts[1].id[:12] in text or hosts[2].id[:12] in text
            hook = pending.hook()
            with pytest.raises(ReplicasUnreachable):  # without --queue the error goes to the writer
                await hook(draft("q/k", "no-queue"), None)
            queue_commits.set(True)
            with pytest.raises(CommitQueued) as queued:
                await hook(draft("q/k", "queued"), None)
            assert queued.value.http_status == 202 and queued.value.to_json()["pending"] == queued.value.pending_id
            listed = pending.list()
            assert [p["id"] for p in listed] == [queued.value.pending_id]
            assert listed[0]["state"] == "queued" and listed[0]["key"] == "q/k"
            await heal(hosts)
            await wait_for(lambda: not pending.list(), 15, "the queued commit issued")
            assert [m.key for m in learned] == ["q/k"] and learned[0].version >= 2
            assert learned[0].content_hash == draft("q/k", "queued").content_hash
        finally:
            await pending.close()
            await close_all(hosts)
    run(main())


def test_malformed_stale_and_foreign_frames_are_dropped_and_counted(tmp_path):
    async def main():
        hosts = await make_mesh(tmp_path, THREE + [("a", "node")])
        try:
            target = hosts[1]
            addr = target.gossip.address
            roster = target.service.roster
            sender = hosts[0].gossip
            cases = [
                ("malformed", "not a map"),
                ("roster_mismatch", {"e": roster.epoch + 1, "d": roster.digest, "ms": []}),
                ("roster_mismatch", {"e": roster.epoch, "d": "0" * 32, "ms": []}),
                ("malformed:malformed_issuance", {"e": roster.epoch, "d": roster.digest, "ms": [{"t": "bogus"}]}),
                ("malformed:malformed_issuance", {"e": roster.epoch, "d": roster.digest,
                                                  "ms": [{"t": "prepare", "key": "k", "ballot": [1, 2]}]}),
            ]
            for counter, body in cases:
                before = target.service.counters.get(counter, 0)
                await sender.request(addr, "issuance", body, timeout=2)
                assert target.service.counters.get(counter, 0) == before + 1, counter
            node = hosts[3].gossip  # admitted, but not a master: its Paxos messages are not heard
            await node.request(addr, "issuance", {"e": roster.epoch, "d": roster.digest, "ms": []}, timeout=2)
            assert target.service.counters.get("not_master") == 1
            assert (await hosts[2].issue(draft("f/k", "still fine"))).version == 1
        finally:
            await close_all(hosts)
    run(main())


def test_a_stream_takes_frames_in_order_from_its_sender_and_ends_on_an_old_seq_or_another_sender(tmp_path):
    """Frames of kind issuance_stream after the first ride one connection: each must be a valid envelope
    of the same sender with a higher seq; anything else ends the stream (counted by gossip as a drop)."""

    from mesh.runtime.issuance import STREAM_KIND

    async def main():
        hosts = await make_mesh(tmp_path, THREE)
        try:
            target, sender, other = hosts[1], hosts[0], hosts[2]
            roster = target.service.roster
            empty = {"e": roster.epoch, "d": roster.digest, "ms": []}
            stale = {"e": roster.epoch + 5, "d": roster.digest, "ms": []}  # read, then counted as roster_mismatch

            def mismatches():
                return target.service.counters.get("roster_mismatch", 0)

            def bad():
                return target.gossip.drops.get("bad_stream", 0)

            first, second = sender.gossip.seal(STREAM_KIND, empty), sender.gossip.seal(STREAM_KIND, empty)
            third = sender.gossip.seal(STREAM_KIND, stale)
            n0, b0 = mismatches(), bad()
            await stream_frames(target, [first, second, third, second, sender.gossip.seal(STREAM_KIND, stale)])
            assert (mismatches(), bad()) == (n0 + 1, b0 + 1)  # in order read; the old seq ended the stream
            await stream_frames(target, [sender.gossip.seal(STREAM_KIND, empty), other.gossip.seal(STREAM_KIND, stale)])
            assert (mismatches(), bad()) == (n0 + 1, b0 + 2)  # another sender's frame is not read
            assert (await hosts[2].issue(draft("s/k", "still fine"))).version == 1
        finally:
            await close_all(hosts)
    run(main())


def test_a_keyed_stream_signs_its_first_frame_only_and_ends_on_a_frame_without_its_mac(tmp_path):
    """After the first frame (signed, with the key offer) a stream's frames carry a MAC under the
    stream's key instead of a signature; a frame without it ends the stream unread."""

    from mesh.core import stream_auth
    from mesh.runtime.issuance import STREAM_KIND
    from tests.issuance_runtime.helpers import identity

    async def main():
        hosts = await make_mesh(tmp_path, THREE)
        try:
            for i in range(40):
                assert (await hosts[i % 3].issue(draft(f"m/k{i % 7}", f"v{i}"))).version >= 1
            for h in hosts:
                c = h.service.counters
                # one signed frame per stream to each other master (none was cut), every other one MAC'd
                assert 1 <= c["frames_signed"] <= 2 < c["frames_sent"], c

            target, sender = hosts[1], hosts[0]
            roster = target.service.roster
            stale = {"e": roster.epoch + 5, "d": roster.digest, "ms": []}  # read, then counted as roster_mismatch
            ephemeral, key = stream_auth.offer(identity(sender.index), identity(target.index).public_key)
            mac = stream_auth.FrameMac(key)

            def mismatches():
                return target.service.counters.get("roster_mismatch", 0)

            n0, bad0 = mismatches(), target.gossip.drops.get("bad_mac", 0)
            await stream_frames(target, [sender.gossip.seal(STREAM_KIND, {**stale, "k": ephemeral}), mac.seal(stale),
                          sender.gossip.seal(STREAM_KIND, stale),  # signed, but this stream takes MACs only
                          mac.seal(stale)])
            assert mismatches() == n0 + 2  # the first frame and the MAC'd one; nothing after the signed one
            assert target.gossip.drops.get("bad_mac", 0) == bad0 + 1
            assert (await hosts[2].issue(draft("m/after", "still fine"))).version == 1
        finally:
            await close_all(hosts)
    run(main())
