"""Elton's reads in the simulator run the real fetch and holder cores (FetchPlanner, WanCoalescer,
HolderIndex, HolderReporter), and the invariant checker catches a coalescer that grants every claim."""

from mesh.core.fetch import FetchPlanner, WanCoalescer
from mesh.core.holders import HolderIndex, HolderReporter
from sim.content import SimChunk, chunk_data, chunk_ref_of, file_chunks
from sim.run import run_system
from sim.scenario import load_scenario

MIB = 2**20


def _counting(monkeypatch, cls, name, calls):
    real = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls[f"{cls.__name__}.{name}"] = calls.get(f"{cls.__name__}.{name}", 0) + 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)


def test_thesis_reads_go_through_the_real_planner_coalescer_index_and_reporter(monkeypatch):
    calls: dict[str, int] = {}
    for cls, name in ((FetchPlanner, "receive"), (FetchPlanner, "drain"), (WanCoalescer, "receive"),
                      (HolderIndex, "receive"), (HolderIndex, "answer"), (HolderReporter, "handle_timer")):
        _counting(monkeypatch, cls, name, calls)
    r = run_system(load_scenario("thesis"), 1, "elton")
    assert r.violations == [] and len(r.read_latencies) == 3
    # 16 chunks of 4 MiB: one planner (the later reads find every chunk on the reader's disk), 16 claims
    # granted by the public cluster's coalescer and 16 WanDone, 16 ChunkOk
    fetch = r.extra["fetch"]
    assert fetch["planners"] == 1 and fetch["wan_grants"] == 16 and fetch["chunk_requests"] == 16
    assert calls["FetchPlanner.receive"] >= 32 and calls["WanCoalescer.receive"] == 32
    assert calls["HolderIndex.receive"] > 0 and calls["HolderIndex.answer"] >= 1
    assert calls["HolderReporter.handle_timer"] > 0
    assert "real" in r.extra["cores"]["fetch planner"] and "real" in r.extra["cores"]["WAN coalescing"]


def test_stand_in_chunk_bytes_verify_by_hash_and_size():
    (ref,) = file_chunks("k", 1, 3 * MIB, 4 * MIB)
    data = chunk_data(ref)
    assert isinstance(data, SimChunk) and len(data) == 3 * MIB and len(bytes(data)) == 3 * MIB
    assert chunk_ref_of(data) == ref
    (other,) = file_chunks("k", 2, 3 * MIB, 4 * MIB)
    assert chunk_ref_of(chunk_data(other)) != ref


def test_a_read_completes_from_the_next_holder_when_its_holder_crashes_mid_transfer():
    # public/1 reads the file first (from the writer, over the WAN); public/2 then reads it from
    # public/1 over a slow LAN, and public/1 crashes mid-transfer: the planner abandons its requests
    # (the failure detector says dead), re-ranks and finishes from the writer across the WAN.
    sets = ["clusters.1.hosts=3", "clusters.1.lan_bandwidth_mbps=50",
            'workload=[{kind="ops",ops=[{at=30,host="private/1",op="write",key="f",size=67108864},'
            '{at=100,host="public/1",op="read",key="f"},{at=300,host="public/2",op="read",key="f"}]}]',
            'faults=[{kind="crash",host="public/1",at=303,restart_at=600}]']
    sc = load_scenario("thesis", sets)
    r = run_system(sc, 1, "elton")
    assert r.violations == []
    assert len(r.read_latencies) == 2 and r.reads_failed == 0
    fetch = r.extra["fetch"]
    assert fetch["planners"] == 2 and fetch.get("holder_faults_dead", 0) >= 1
    # some chunks came from public/1 before it died, the rest crossed the WAN a second time
    to_public = r.ledger.by_pair["private->public"]
    assert 64 * MIB + 4 * MIB <= to_public < 2 * 64 * MIB
    assert r.ledger.by_pair["public->public"] >= 4 * MIB


ROLLOUT = ["clusters.0.hosts=13", "clusters.1.hosts=13", "clusters.2.hosts=13", "duration_s=400",
           "workload.0.size=41943040", "workload.0.layers=1", "workload.0.readers_per_cluster=10",
           "workload.0.read_spread_s=2"]


def test_concurrent_readers_of_a_cluster_pull_each_chunk_across_the_wan_once():
    sc = load_scenario("image-rollout", ROLLOUT)
    r = run_system(sc, 3, "elton")
    assert r.violations == [] and len(r.read_latencies) == 30 and r.reads_failed == 0
    size = 40 * MIB
    # two reading clusters besides the writer's, each pulls the file once, whatever its 10 readers do
    assert 2 * size <= r.ledger.wan_by_category["data"] < 2 * size + 64 * 1024
    assert r.extra["fetch"]["wan_grants"] == 20


def test_a_coalescer_that_grants_every_claim_is_caught(monkeypatch):
    real = WanCoalescer._claim

    def always_grant(self, node, msg, now):
        self._pulls.pop(msg.chunk, None)  # forget the pull under way: every claimant gets the WAN
        real(self, node, msg, now)

    monkeypatch.setattr(WanCoalescer, "_claim", always_grant)
    r = run_system(load_scenario("image-rollout", ROLLOUT), 3, "elton")
    assert any("crossed the WAN into" in v for v in r.violations)


def test_two_reads_of_one_file_on_one_host_share_one_fetch_per_chunk():
    ops = ('workload=[{kind="ops",ops=[{at=30,host="private/1",op="write",key="f",size=67108864},'
           '{at=100,host="public/1",op="read",key="f"},{at=100.5,host="public/1",op="read",key="f"}]}]')
    r = run_system(load_scenario("thesis", [ops]), 1, "elton")
    assert r.violations == [] and len(r.read_latencies) == 2
    assert r.extra["fetch"]["planners"] == 1 and r.extra["fetch"]["wan_grants"] == 16
    assert 64 * MIB <= r.ledger.wan_by_category["data"] < 64 * MIB + 64 * 1024
    first, second = sorted(r.read_latencies, reverse=True)
    assert abs(first - 0.5 - second) < 0.1  # the second read waited for the first one's copies
