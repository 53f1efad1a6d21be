from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.holders import (
    MAX_REPORT_CHUNKS,
    HolderIndex,
    HolderReport,
    HolderReporter,
    RequestFullReport,
    VersionHeld,
    VersionHolders,
)
from mesh.core.manifest import chunk_hash
from mesh.errors import ProtocolError

H = [chunk_hash(bytes([i])) for i in range(40)]


def pump(reporter: HolderReporter, index: HolderIndex, node: str, now: float, drop: set[int] = frozenset()) -> None:
    reporter.handle_timer(now)
    for i, report in enumerate(reporter.drain()):
        if i not in drop:
            index.receive(node, HolderReport.from_wire(report.to_wire()), now)
    for req in index.drain():
        assert req.dest == node
        reporter.request_full()


def test_full_then_deltas() -> None:
    r, ix = HolderReporter(epoch=1, chunks=H[:3]), HolderIndex(ttl=30)
    pump(r, ix, "n1", 0.0)
    assert ix.chunks_of("n1") == set(H[:3])
    r.added(H[5])
    r.removed(H[0])
    pump(r, ix, "n1", 1.0)
    assert ix.chunks_of("n1") == {H[1], H[2], H[5]}
    assert ix.holders(H[5], 1.0) == ["n1"] and ix.holders(H[0], 1.0) == []


def test_lost_delta_triggers_full_report() -> None:
    r, ix = HolderReporter(epoch=1), HolderIndex(ttl=30)
    pump(r, ix, "n1", 0.0)
    r.added(H[1])
    pump(r, ix, "n1", 1.0, drop={0})  # lost
    r.added(H[2])
    pump(r, ix, "n1", 2.0)  # gap seen -> RequestFullReport
    assert ix.chunks_of("n1") == set()
    pump(r, ix, "n1", 2.0)
    assert ix.chunks_of("n1") == {H[1], H[2]}


def test_restart_with_new_epoch_must_begin_with_a_full_report() -> None:
    ix = HolderIndex(ttl=30)
    ix.receive("n1", HolderReport(1, 1, (H[0],), full=True), 0.0)
    ix.receive("n1", HolderReport(2, 1, (H[1],)), 1.0)  # a delta in a new epoch
    assert ix.drain() == [RequestFullReport("n1")] and ix.chunks_of("n1") == {H[0]}
    ix.receive("n1", HolderReport(2, 2, (H[1],), full=True), 1.0)
    assert ix.chunks_of("n1") == {H[1]}
    ix.receive("n1", HolderReport(1, 9, (H[3],), full=True), 1.0)  # from before the restart
    assert ix.chunks_of("n1") == {H[1]} and ix.ignored == 2


def test_dead_holder_is_forgotten_within_ttl_and_touch_keeps_it() -> None:
    ix = HolderIndex(ttl=10)
    ix.receive("a", HolderReport(1, 1, (H[0],), full=True), 0.0)
    ix.receive("b", HolderReport(1, 1, (H[0],), full=True), 0.0)
    ix.touch("a", 8.0)
    assert ix.next_deadline() == 10.0
    assert ix.holders(H[0], 10.0) == ["a"]  # b's lease lapsed even before the timer ran
    ix.handle_timer(10.0)
    assert ix.nodes() == ["a"] and ix.next_deadline() == 18.0
    ix.forget("a")
    assert ix.holders(H[0], 10.0) == [] and ix.next_deadline() is None


def test_large_full_report_comes_in_parts() -> None:
    many = [f"{i:064x}" for i in range(MAX_REPORT_CHUNKS + 5)]
    r, ix = HolderReporter(epoch=3, chunks=many), HolderIndex()
    r.handle_timer(0.0)
    parts = r.drain()
    assert len(parts) == 2 and parts[0].full and not parts[0].last and parts[1].last
    ix.receive("n", parts[0], 0.0)
    assert ix.chunks_of("n") == set()  # the old set stays until the last part
    ix.receive("n", parts[1], 0.0)
    assert len(ix.chunks_of("n")) == len(many)


def test_per_node_limit() -> None:
    ix = HolderIndex(max_chunks_per_node=2)
    with pytest.raises(ProtocolError):
        ix.receive("n", HolderReport(1, 1, tuple(H[:3]), full=True), 0.0)


@pytest.mark.parametrize("wire", [
    None, {"t": "holders"}, {"t": "holders", "e": 1, "s": 0, "a": [], "r": [], "f": False, "p": 0, "l": True},
    {"t": "holders", "e": 1, "s": 1, "a": ["xyz"], "r": [], "f": False, "p": 0, "l": True},
    {"t": "holders", "e": 1, "s": 1, "a": [], "r": [H[0]], "f": True, "p": 0, "l": True},
    {"t": "holders", "e": -1, "s": 1, "a": [], "r": [], "f": False, "p": 0, "l": True},
])
def test_malformed_reports_are_dropped(wire: object) -> None:
    with pytest.raises(ProtocolError):
        HolderReport.from_wire(wire)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.tuples(st.integers(0, 39), st.booleans()), max_size=60))
def test_index_converges_to_what_the_node_holds_despite_loss(seed: int, ops: list[tuple[int, bool]]) -> None:
    rng = random.Random(seed)
    r, ix = HolderReporter(epoch=1, chunks=H[:5], delta_interval=1.0), HolderIndex(ttl=1e9, resync_interval=0)
    now = 0.0
    for i, add in ops:
        (r.added if add else r.removed)(H[i])
        now += 1.0
        pump(r, ix, "n", now, drop={0} if rng.random() < 0.3 else set())
    for _ in range(3):  # loss-free rounds a heartbeat apart: a gap is noticed, a full report follows
        if rng.random() < 0.5:
            r.added(H[39])
        now += r.heartbeat
        pump(r, ix, "n", now)
    assert ix.chunks_of("n") == r._held


def test_version_holders_at_home() -> None:
    vh = VersionHolders(ttl=100, max_records=3)
    vh.receive(VersionHeld("a/b", 1, "dc1"), 0.0)
    vh.receive(VersionHeld("a/b", 1, "aws-eu"), 10.0)
    assert vh.clusters("a/b", 1, 50.0) == ["aws-eu", "dc1"]
    assert vh.clusters("a/b", 1, 100.0) == ["aws-eu"]
    vh.receive(VersionHeld("a/b", 1, "dc1"), 100.0)  # refreshed
    vh.receive(VersionHeld("a/b", 1, "aws-eu", held=False), 100.0)
    assert vh.clusters("a/b", 1, 150.0) == ["dc1"] and vh.next_deadline() == 200.0
    for v in (2, 3, 4):
        vh.receive(VersionHeld("a/b", v, "dc1"), 101.0)
    assert vh.clusters("a/b", 1, 150.0) == []  # bounded: the oldest record went first
    vh.forget_cluster("dc1")
    vh.handle_timer(1e9)
    assert vh.next_deadline() is None
    with pytest.raises(ProtocolError):
        VersionHeld.from_wire({"t": "version_held", "k": "a//b", "v": 1, "c": "x", "h": True})
    assert VersionHeld.from_wire(VersionHeld("k", 2, "c").to_wire()) == VersionHeld("k", 2, "c")


def test_who_holds_answer_and_wire() -> None:
    from mesh.core.holders import Holders, WhoHolds

    ix = HolderIndex(ttl=10)
    ix.receive("n1", HolderReport(1, 1, (H[0], H[1]), full=True), 0.0)
    ix.receive("n2", HolderReport(1, 1, (H[1],), full=True), 0.0)
    q = WhoHolds.from_wire(WhoHolds((H[0], H[1], H[2])).to_wire())
    a = Holders.from_wire(ix.answer(q, "dc1", 1.0).to_wire())
    assert a == Holders("dc1", ((H[0], ("n1",)), (H[1], ("n1", "n2")), (H[2], ())))
    assert ix.answer(q, "dc1", 11.0).entries[1] == (H[1], ())  # leases lapsed
    for bad in ({"t": "who_holds", "c": ["x"]}, {"t": "who_holds", "c": [H[0]] * 2000}):
        with pytest.raises(ProtocolError):
            WhoHolds.from_wire(bad)
    with pytest.raises(ProtocolError):
        Holders.from_wire({"t": "holders_of", "k": "", "e": []})
    with pytest.raises(ProtocolError):
        Holders.from_wire({"t": "holders_of", "k": "dc1", "e": [[H[0], [1]]]})


def test_a_full_report_sent_before_a_first_hand_add_does_not_erase_it() -> None:
    """A node finishes a WAN pull (the master records it at once) while a full report it emitted
    earlier is still on the way: that report must not make the cluster forget the new copy, or the
    next reader is granted a second WAN pull of the same chunk."""
    r, ix = HolderReporter(epoch=1, chunks=H[:2]), HolderIndex(ttl=30)
    pump(r, ix, "n1", 0.0)
    r.request_full()
    r.handle_timer(1.0)
    in_flight = r.drain()  # the full report, emitted before the pull finished
    r.added(H[9])
    ix.add("n1", H[9], 1.5)  # WanDone(ok) reached the master first
    for report in in_flight:
        ix.receive("n1", report, 1.6)
    assert ix.holders(H[9], 1.6) == ["n1"]
    pump(r, ix, "n1", 3.0)  # the delta that names it arrives as usual
    assert ix.holders(H[9], 3.0) == ["n1"]


def test_a_first_hand_add_is_dropped_by_a_later_report_that_removes_it() -> None:
    r, ix = HolderReporter(epoch=1, chunks=H[:2]), HolderIndex(ttl=30)
    pump(r, ix, "n1", 0.0)
    ix.add("n1", H[9], 1.0)
    r.added(H[9])
    pump(r, ix, "n1", 2.0)
    r.removed(H[9])  # evicted later: a report that says so wins over the first-hand record
    pump(r, ix, "n1", 4.0)
    assert ix.holders(H[9], 4.0) == []


def test_a_first_hand_add_before_the_nodes_first_report_is_kept_and_the_report_still_accepted() -> None:
    ix = HolderIndex(ttl=30)
    ix.add("n1", H[9], 0.0)
    assert ix.holders(H[9], 0.0) == ["n1"]
    r = HolderReporter(epoch=7, chunks=[H[1], H[9]])
    pump(r, ix, "n1", 0.5)
    assert ix.chunks_of("n1") == {H[1], H[9]}
    assert ix.holders(H[9], 40.0) == []  # and the lease still lapses without reports


def test_a_chunk_found_missing_is_dropped_even_if_first_hand() -> None:
    r, ix = HolderReporter(epoch=1), HolderIndex(ttl=30)
    pump(r, ix, "n1", 0.0)
    ix.add("n1", H[9], 1.0)
    ix.drop("n1", H[9])
    r.request_full()
    pump(r, ix, "n1", 2.0)
    assert ix.holders(H[9], 2.0) == []


def test_answers_spread_readers_over_every_holder_of_a_popular_chunk() -> None:
    from mesh.core.holders import MAX_HOLDERS_LISTED, WhoHolds
    ix = HolderIndex(ttl=30)
    nodes = [f"n{i:03d}" for i in range(5 * MAX_HOLDERS_LISTED)]
    for n in nodes:
        ix.receive(n, HolderReport(1, 1, (H[0],), full=True), 0.0)
    seen: set[str] = set()
    for _ in range(len(nodes)):
        [(chunk, listed)] = ix.answer(WhoHolds((H[0],)), "c1", 1.0).entries
        assert chunk == H[0] and len(listed) == MAX_HOLDERS_LISTED and set(listed) <= set(nodes)
        seen.update(listed)
    assert seen == set(nodes)
