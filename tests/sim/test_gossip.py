"""The membership study runs the real SWIM cores: a small mesh converges, deterministically."""

import json

import pytest

from sim.cli import main
from sim.gossip import model_seconds, quantile_time, run_gossip
from sim.scenario import ScenarioError, load_scenario

SMALL = ("clusters.0.masters=50", "clusters.0.hosts=51")


def test_fifty_masters_see_a_kill_and_a_join_and_report_the_same_times_for_one_seed():
    sc = load_scenario("gossip", SMALL)
    a = run_gossip(sc, 3)
    kill, join = a["changes"]["kill"], a["changes"]["join"]
    assert kill["observers"] == 49 and kill["dead_reached"] == 49 and join["reached"] == 49
    # SWIM: a probe round notices the death (probe every 0.5 s), Lifeguard suspicion then lasts seconds
    assert 0 < kill["first_suspect_after_s"] < 2.0
    assert kill["first_suspect_after_s"] < kill["first_dead_after_s"] < 10.0
    assert 0 < kill["dead_to_quantile_s"] < 3.0 and 0 < join["join_to_quantile_s"] < 3.0
    b = a["bytes"]
    assert b["wan_bytes"] == 0 and b["datagram_bytes"] > 0 and b["push_pulls"] > 0
    assert 0 < b["quiet_datagram_bytes_per_master_per_s"] < b["datagram_bytes_per_master_per_s"]
    assert run_gossip(load_scenario("gossip", SMALL), 3) == a
    assert run_gossip(load_scenario("gossip", SMALL), 4) != a


def test_cli_writes_a_gossip_report_identical_for_one_seed(tmp_path):
    for d in ("a", "b"):
        assert main(["run", "gossip", "--seed", "2", "--out", str(tmp_path / d), *(x for s in SMALL for x in ("--set", s))]) == 0
    ja = (tmp_path / "a" / "report.json").read_bytes()
    assert ja == (tmp_path / "b" / "report.json").read_bytes()
    assert (tmp_path / "a" / "report.md").read_bytes() == (tmp_path / "b" / "report.md").read_bytes()
    g = json.loads(ja)["gossip"]
    assert g["masters"] == 50 and g["model"]["serf_published"]["seconds"] == 2.2
    md = (tmp_path / "a" / "report.md").read_text()
    assert "99.99% of masters" in md and "Serf" in md and "B/master/s" in md


def test_model_and_quantile_helpers():
    # the mean-field push epidemic at Serf's setting lands near its published 2.2 s
    assert 1.4 <= model_seconds(1000, 3, 0.2, 0.9999) <= 2.4
    seen = {f"h{i}": float(i) for i in range(10)}
    assert quantile_time(seen, 10, 0.9999, 0.0) == 9.0
    assert quantile_time(seen, 10, 0.5, 1.0) == 3.0
    assert quantile_time(seen, 11, 0.9999, 0.0) is None


def test_gossip_table_mistakes_are_named():
    with pytest.raises(ScenarioError, match="gossip.profile"):
        run_gossip(load_scenario("gossip", (*SMALL, "gossip.profile=fast")), 1)
    with pytest.raises(ScenarioError, match="unknown gossip"):
        run_gossip(load_scenario("gossip", (*SMALL, "gossip.colour=1")), 1)
