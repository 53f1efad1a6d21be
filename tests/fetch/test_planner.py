from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.costs import CostModel, Host, PriceTable
from mesh.core.fetch import (
    ChunkOk,
    FetchConfig,
    FetchPlanner,
    InCluster,
    Request,
    WanClaim,
    WanDone,
    WanGrant,
    WanWait,
    message_from_wire,
)
from mesh.core.manifest import ChunkRef, chunk_hash
from mesh.errors import ProtocolError
from tests.fetch.world import BEHAVIOURS, World


def nid(name: str) -> str:
    return chunk_hash(name.encode())[:40]


def host(name: str, cluster: str) -> Host:
    return Host(nid(name), cluster)


def blobs(n: int, size: int = 200_000, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def refs(datas: list[bytes]) -> list[ChunkRef]:
    return [ChunkRef(chunk_hash(d), len(d)) for d in datas]


def check_read(r, datas: list[bytes]) -> None:  # noqa: ANN001
    assert r.outcome is None and r.planner.done
    assert [d.index for d in r.delivered] == list(range(len(datas)))
    assert [d.data for d in r.delivered] == datas


def test_own_cluster_first() -> None:
    w = World()
    datas = blobs(6)
    for d in datas:
        w.hold(host("far", "aws"), d)
        w.hold(host("near", "dc1"), d)
    r = w.reader(host("me", "dc1"), refs(datas))
    w.run()
    check_read(r, datas)
    assert {req.holder.cluster for _, req in w.requests} == {"dc1"} and not w.wan_pulls


def test_large_file_spreads_over_holders_within_the_bound() -> None:
    w = World()
    datas = blobs(12, size=2_000_000)
    for d in datas:
        for name in ("a", "b", "c"):
            w.hold(host(name, "dc1"), d)
    r = w.reader(host("me", "dc1"), refs(datas), FetchConfig(max_parallel=3))
    w.run()
    check_read(r, datas)
    assert r.max_inflight == 3
    assert len({req.holder.node for _, req in w.requests}) == 3


def test_corrupt_missing_and_silent_holders_are_skipped() -> None:
    w = World()
    datas = blobs(3)
    bad = {"liar": "corrupt", "empty": "missing", "mute": "silent"}
    for d in datas:
        for name, how in bad.items():
            h = w.hold(host(name, "dc1"), d)
            w.behaviour[(nid(name), h)] = how
        w.hold(host("honest", "aws"), d)
    r = w.reader(host("me", "dc1"), refs(datas), FetchConfig(coalesce=False, timeout_base=1.0))
    w.run()
    check_read(r, datas)
    assert {k for k, v in r.failed.items() if {nid(n) for n in bad} <= v} == {c.hash for c in refs(datas)}


def test_rerank_after_each_chunk_uses_a_faster_holder() -> None:
    model = CostModel(PriceTable.from_config({}))
    me, a, b = host("me", "x"), host("a", "y"), host("b", "z")
    datas = blobs(3, size=1_000_000)
    p = FetchPlanner(me, refs(datas), model, 0.0, FetchConfig(max_parallel=1, coalesce=False),
                     holders={c.hash: [a, b] for c in refs(datas)})
    first = [e for e in p.drain() if isinstance(e, Request)]
    slow = min(a, b, key=lambda h: h.node)  # equal estimates: ties go to the smaller node id
    assert [e.holder for e in first] == [slow]
    p.receive(ChunkOk(first[0].request_id, datas[0]), 30.0)  # 1 MB in 30 s: a very slow link
    second = [e for e in p.drain() if isinstance(e, Request)]
    assert [e.holder for e in second] == [b if slow == a else a]


def test_timeout_moves_on_and_a_late_answer_is_ignored() -> None:
    model = CostModel()
    me, a, b = host("me", "x"), host("a", "x"), host("b", "x")
    datas = blobs(1)
    p = FetchPlanner(me, refs(datas), model, 0.0, FetchConfig(timeout_base=2.0, min_bandwidth=1e9),
                     holders={refs(datas)[0].hash: [a, b]})
    (req,) = [e for e in p.drain() if isinstance(e, Request)]
    assert p.next_deadline() == req.deadline
    p.handle_timer(req.deadline)
    kinds = [type(e).__name__ for e in p.drain()]
    assert kinds == ["Cancel", "HolderFault", "Request"]
    p.receive(ChunkOk(req.request_id, datas[0]), req.deadline + 1)
    assert p.stale_results == 1 and not p.done


def test_nobody_has_it_fails_after_lookups() -> None:
    """A chunk nobody holds fails with ``no_holder``, after ``max_lookups`` rounds spaced by the
    growing back-off (a holder report may still be on its way), and nothing is left in flight."""
    w = World()
    datas = blobs(2)
    w.hold(host("a", "dc1"), datas[0])
    r = w.reader(host("me", "dc1"), refs(datas))
    rounds: list[float] = []  # when the world answered a lookup round (a NeedHolders)
    lookup = w._lookup

    def counted(reader: object, chunk: str) -> None:
        rounds.append(w.now)
        lookup(reader, chunk)  # type: ignore[arg-type]

    w._lookup = counted  # type: ignore[method-assign]
    w.run()
    config = r.planner.config
    assert r.outcome is not None and r.outcome.index == 1 and r.outcome.reason == "no_holder"
    assert len(rounds) == config.max_lookups
    gaps = [b - a for a, b in zip(rounds, rounds[1:], strict=False)]
    assert all(gap >= config.lookup_backoff * 2 ** i for i, gap in enumerate(gaps)), gaps
    assert r.inflight == {}


def test_holder_reported_after_the_first_lookup_is_found_by_a_later_round() -> None:
    """A read right after a write elsewhere: the writer's holder report reaches the master a moment
    after the reader's first lookup. A later round finds it and the read completes."""
    w = World()
    datas = blobs(1)
    r = w.reader(host("me", "dc1"), refs(datas))
    w.at(0.6, lambda: w.hold(host("a", "dc1"), datas[0]))
    w.run()
    assert r.outcome is None
    assert [d.data for d in r.delivered] == datas


def test_lookup_finds_remote_holders() -> None:
    w = World()
    datas = blobs(3)
    for d in datas:
        w.hold(host("far", "aws"), d)
    r = w.reader(host("me", "dc1"), refs(datas), tell="cluster")
    w.run()
    check_read(r, datas)


def test_duplicate_chunks_in_a_file_are_fetched_once() -> None:
    w = World()
    d = blobs(2)
    datas = [d[0], d[1], d[0], d[0]]
    for x in d:
        w.hold(host("a", "dc1"), x)
    r = w.reader(host("me", "dc1"), refs(datas))
    w.run()
    check_read(r, datas)
    assert len(w.requests) == 2


@pytest.mark.parametrize("readers", [2, 7])
def test_concurrent_readers_in_one_cluster_pull_each_chunk_once(readers: int) -> None:
    w = World(coords={nid("far1"): (0.1, 0.0), nid("far2"): (0.0, 0.12)})
    datas = blobs(5)
    for d in datas:
        w.hold(host("far1", "aws"), d)
        w.hold(host("far2", "gcp"), d)
    rs = [w.reader(host(f"me{i}", "dc1"), refs(datas)) for i in range(readers)]
    w.run()
    for r in rs:
        check_read(r, datas)
    assert w.wan_pulls == {("dc1", c.hash): 1 for c in refs(datas)}


def test_coalescing_survives_the_death_of_the_puller() -> None:
    w = World()
    datas = blobs(2)
    for d in datas:
        h = w.hold(host("far", "aws"), d)
    rs = [w.reader(host(f"me{i}", "dc1"), refs(datas)) for i in range(3)]
    w.run(until=0.0009)  # claims are granted, transfers started
    _, co = w.masters["dc1"]
    owner = co.pulling(h)
    assert owner is not None
    victim = next(r for r in rs if r.host.node == owner)
    w.readers.remove(victim)
    w.kill(owner)
    w.run()
    for r in rs:
        if r is not victim:
            check_read(r, datas)
    assert all(n <= 2 for n in w.wan_pulls.values())


def test_silent_master_is_bypassed() -> None:
    model = CostModel()
    me, far = host("me", "x"), host("far", "y")
    datas = blobs(1)
    p = FetchPlanner(me, refs(datas), model, 0.0, FetchConfig(claim_timeout=3.0), holders={refs(datas)[0].hash: [far]})
    assert [type(e).__name__ for e in p.drain()] == ["ToMaster"]
    p.handle_timer(3.0)
    (req,) = p.drain()
    assert isinstance(req, Request) and req.holder == far


def test_wait_then_in_cluster_then_grant_release() -> None:
    model = CostModel()
    me, peer, far = host("me", "x"), host("peer", "x"), host("far", "y")
    datas = blobs(1)
    h = refs(datas)[0].hash
    p = FetchPlanner(me, refs(datas), model, 0.0, holders={h: [far]})
    p.drain()
    p.receive(WanWait(h), 0.1)
    assert p.drain() == [] and p.next_deadline() == pytest.approx(30.1)
    p.receive(InCluster(h, (peer.node,)), 1.0)
    (req,) = p.drain()
    assert req.holder == peer
    p.receive(ChunkOk(req.request_id, datas[0]), 1.1)
    assert [type(e).__name__ for e in p.drain()] == ["BecameHolder", "Deliver"]
    p.receive(WanGrant(h), 1.2)  # a stale grant is released at once
    assert [e.message for e in p.drain()] == [WanDone(h, True)]


@pytest.mark.parametrize("wire", [
    None, {"t": "nope"}, {"t": "wan_claim", "c": "zz", "x": []}, {"t": "wan_claim", "c": "0" * 64, "x": [1]},
    {"t": "in_cluster", "c": "0" * 64, "n": ["a"] * 17}, {"t": "wan_done", "c": "0" * 64, "ok": "yes"},
    {"t": "wan_grant"},
])
def test_malformed_coalescing_messages(wire: object) -> None:
    with pytest.raises(ProtocolError):
        message_from_wire(wire)


def test_wire_round_trip() -> None:
    for m in (WanClaim("a" * 64, ("n1",)), WanGrant("b" * 64), WanWait("c" * 64), InCluster("d" * 64, ("x",)),
              WanDone("e" * 64, False)):
        assert message_from_wire(m.to_wire()) == m


CLUSTERS = ("dc1", "aws", "gcp")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), coalesce=st.booleans(), n_chunks=st.integers(1, 6), readers=st.integers(1, 3),
       bad_rate=st.floats(0, 0.8), prices=st.lists(st.floats(0, 0.5), min_size=3, max_size=3))
def test_property_cheapest_known_holder_and_nothing_corrupt_delivered(
        seed: int, coalesce: bool, n_chunks: int, readers: int, bad_rate: float, prices: list[float]) -> None:
    rng = random.Random(seed)
    table = PriceTable.from_config({"time_weight": rng.choice([0.0001, 0.001, 0.01]),
                                    "pairs": {"dc1": {"aws": prices[0], "gcp": prices[1]}, "aws": {"gcp": prices[2]}}})
    holders = [host(f"h{i}", rng.choice(CLUSTERS)) for i in range(6)]
    coords = {h.node: (rng.uniform(0, 0.2), rng.uniform(0, 0.2)) for h in holders}
    w = World(table, coords, coalesce=coalesce)
    datas = [rng.randbytes(rng.randint(1, 300_000)) for _ in range(n_chunks)]
    honest_everywhere = True
    for d in datas:
        mine = rng.sample(holders, rng.randint(1, len(holders)))
        hows = [rng.choice(BEHAVIOURS[1:]) if rng.random() < bad_rate else "ok" for _ in mine]
        honest_everywhere &= "ok" in hows
        for h, how in zip(mine, hows, strict=True):
            w.behaviour[(h.node, w.hold(h, d))] = how
    rs = [w.reader(host(f"me{i}", rng.choice(CLUSTERS)), refs(datas),
                   FetchConfig(coalesce=coalesce, timeout_base=1.0, max_parallel=rng.randint(1, 4)))
          for i in range(readers)]
    w.run()  # World audits every Request: least expected cost among live, untried, known holders
    for r in rs:
        for d in r.delivered:
            assert chunk_hash(d.data) == d.ref.hash and d.ref == refs(datas)[d.index]
        assert [d.index for d in r.delivered] == list(range(len(r.delivered)))
        if honest_everywhere:
            check_read(r, datas)
        else:
            assert r.planner.finished
