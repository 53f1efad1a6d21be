"""The elton system's failure detector is the real membership core on every host (small scenarios)."""

from types import SimpleNamespace

import pytest

from sim.run import run_system
from sim.scenario import ScenarioError, load_scenario
from sim.systems.elton import membership_mode
from sim.systems.elton_fetch import FetchLayer

MIB = 2**20


def test_thesis_runs_a_membership_core_on_every_host_and_reports_gossip_apart_from_data():
    sc = load_scenario("thesis")
    r = run_system(sc, 1, "elton")
    m = r.extra["membership"]
    assert m["mode"] == "real" and m["members"] == 5 and m["cores_started"] == 5
    assert m["datagrams_sent"] > 1000 and m["push_pulls"] > 0
    assert r.extra["cores"]["membership"].startswith("real: a mesh.core.membership.Membership core on each of the 5")
    led = r.ledger
    gossip = led.by_category["gossip"] + led.by_category["push_pull"]
    assert gossip == m["datagram_bytes"] + m["push_pull_bytes"] > 0
    gossip_wan = led.wan_by_category["gossip"] + led.wan_by_category["push_pull"]
    assert 0 < gossip_wan == m["wan_bytes"] < 4 * MIB  # the overhead is small next to the file
    assert 64 * MIB <= led.wan_by_category["data"] < 64 * MIB + 64 * 1024  # the file crossed once
    assert led.wan_bytes() - gossip_wan < 64 * MIB + 128 * 1024
    assert r.violations == []


def test_a_crash_is_seen_only_after_the_detector_suspects_it_and_a_restart_comes_back_with_a_higher_incarnation(
        monkeypatch):
    seen: list[tuple[float, str, str]] = []
    real = FetchLayer.member_dead

    def spy(self, observer, node):
        seen.append((self.engine.now, observer, node))
        real(self, observer, node)

    monkeypatch.setattr(FetchLayer, "member_dead", spy)
    crash = 'faults=[{kind="crash",host="private/2",at=100,restart_at=300}]'
    r = run_system(load_scenario("thesis", [crash]), 1, "elton")
    dead = [(t, o) for t, o, n in seen if n == "private/2"]
    # the lan profile probes every 0.5 s and suspects for at least 1.5 s: nobody knows at once
    assert dead and 101.5 < min(t for t, _ in dead) < 130
    assert {o for t, o in dead if t < 300} == {"private/0", "private/1", "public/0", "public/1"}
    assert r.extra["membership"]["cores_started"] == 6
    assert len(r.read_latencies) == 3 and r.violations == []


def test_a_restarted_host_is_seen_alive_again_by_its_higher_incarnation():
    from sim.invariants import InvariantChecker
    from sim.run import build_world
    from sim.systems.base import Context
    from sim.systems.elton import EltonSystem

    sc = load_scenario("thesis", ["duration_s=200"])
    engine, net, hosts, _ops, _ev = build_world(sc, 2)
    elton = EltonSystem(Context(engine, net, sc, hosts, InvariantChecker()))
    elton.start()
    members = elton.members
    assert members is not None

    def change(up):
        net.hosts["public/1"].up = up
        elton.host_changed(net.hosts["public/1"])

    engine.at(50.0, change, False)
    engine.at(80.0, change, True)
    engine.run(75.0)
    assert not members.alive("private/0", "public/1")  # declared dead by then
    engine.run(120.0)
    nid = members.node_of["public/1"]
    for h in ("private/0", "private/1", "private/2", "public/0"):
        info = members.core(h).member(nid)
        assert members.alive(h, "public/1") and info.incarnation == 2


def test_the_switch_picks_the_model_for_large_scenarios_and_names_a_bad_value():
    def ctx(n, mode=None):
        return SimpleNamespace(hosts=[None] * n, scenario=SimpleNamespace(elton={} if mode is None else
                                                                          {"membership": mode}))

    assert membership_mode(ctx(69)) == "real" and membership_mode(ctx(11_000)) == "model"
    assert membership_mode(ctx(5, "model")) == "model" and membership_mode(ctx(500, "real")) == "real"
    with pytest.raises(ScenarioError, match="elton.membership"):
        membership_mode(ctx(5, "sometimes"))
    r = run_system(load_scenario("thesis", ["elton.membership=model"]), 1, "elton")
    assert r.extra["membership"] == {"mode": "model"} and "gossip" not in r.ledger.by_category
    assert r.extra["cores"]["membership"].startswith("modelled")
