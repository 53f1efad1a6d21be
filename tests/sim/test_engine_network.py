"""The engine's ordering and randomness, and the network's sharing, loss, partitions and accounting."""

from sim.engine import Engine
from sim.network import Host, Ledger, LinkSpec, Network, Partition

MB = 1_000_000


def test_same_time_events_run_in_schedule_order_and_cancelled_timers_do_not_run():
    e = Engine(seed=1)
    seen = []
    e.at(2.0, seen.append, "b")
    e.at(1.0, seen.append, "a")
    e.at(2.0, seen.append, "c")
    t = e.timer(1.5, seen.append, "cancelled")
    t.cancel()
    e.run(until=10.0)
    assert seen == ["a", "b", "c"]
    assert e.now == 10.0


def test_random_streams_are_per_purpose_and_per_seed():
    a, b = Engine(7), Engine(7)
    a.rng("loss").random()  # a draw for one purpose does not shift another
    assert a.rng("workload").random() == b.rng("workload").random()
    assert Engine(8).rng("workload").random() != Engine(7).rng("workload").random()


def _net(sharing="fair", loss=0.0, partitions=()):
    e = Engine(3)
    hosts = [Host("x/0", "x", 0, True), Host("x/1", "x", 1, False), Host("y/0", "y", 0, True)]
    lan = {"x": LinkSpec("lan", 0.001, 8 * MB), "y": LinkSpec("lan", 0.001, 8 * MB)}
    wan = {("x", "y"): LinkSpec("wan", 0.05, 8 * MB, loss), ("y", "x"): LinkSpec("wan", 0.05, 8 * MB, loss)}
    ledger = Ledger({"lan": 0.0, "wan": 0.1}, 1.0, series_hosts=True)
    return e, Network(e, hosts, lan, wan, list(partitions), ledger, sharing=sharing)


def test_fair_pipe_shares_bandwidth_between_concurrent_flows():
    e, net = _net("fair")
    done = {}
    net.send("x/0", "y/0", MB, lambda: done.setdefault("a", e.now), "data")  # 1 MB at 1 MB/s
    net.send("x/1", "y/0", MB, lambda: done.setdefault("b", e.now), "data")
    e.run(10.0)
    # both share the x->y pipe: each takes 2 s, plus 50 ms latency
    assert abs(done["a"] - 2.05) < 1e-6 and abs(done["b"] - 2.05) < 1e-6


def test_fifo_pipe_sends_one_flow_after_the_other():
    e, net = _net("fifo")
    done = {}
    net.send("x/0", "y/0", MB, lambda: done.setdefault("a", e.now), "data")
    net.send("x/1", "y/0", MB, lambda: done.setdefault("b", e.now), "data")
    e.run(10.0)
    assert abs(done["a"] - 1.05) < 1e-6 and abs(done["b"] - 2.05) < 1e-6


def test_partition_fails_reliable_sends_until_it_heals_and_bytes_are_priced():
    e, net = _net(partitions=[Partition(0.0, 5.0, frozenset({"x"}), frozenset({"y"}))])
    out = []
    net.send("x/0", "y/0", 2 * MB, lambda: out.append("delivered"), "data", on_fail=lambda: out.append("failed"))
    e.run(1.0)
    e.at(6.0, net.send, "x/0", "y/0", 2 * MB, lambda: out.append("delivered"), "data")
    e.run(20.0)
    assert out == ["failed", "delivered"]
    assert net.ledger.by_class == {"wan": 2 * MB}
    assert abs(net.ledger.cost_usd() - 2 * MB / 1e9 * 0.1) < 1e-12
    assert net.ledger.by_pair == {"x->y": 2 * MB}
    # the 2 s transfer from t=6 is spread over the buckets it spans
    assert net.ledger.series["y/0"] == {6: MB, 7: MB}


def test_loss_drops_datagrams_only():
    e, net = _net(loss=0.5)
    got = []
    for _ in range(200):
        net.send("x/0", "y/0", 100, lambda: got.append(1), "gossip", reliable=False)
    net.send("x/0", "y/0", 100, lambda: got.append(2), "control", reliable=True)
    e.run(5.0)
    assert 60 < got.count(1) < 140 and got.count(2) == 1
    assert net.ledger.dropped["loss"] == 200 - got.count(1)
