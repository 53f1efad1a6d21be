from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.costs import (
    GB,
    BandwidthEstimator,
    CostModel,
    Host,
    LinkClass,
    PriceTable,
    expected_cost,
)
from mesh.errors import ConfigError

A1, A2, B1, C1 = Host("a1", "dc1"), Host("a2", "dc1"), Host("b1", "aws-eu"), Host("c1", "laptop")


def test_defaults_follow_the_issue() -> None:
    t = PriceTable.from_config({})
    assert t.link(A1, A1) == LinkClass.HOST
    assert t.link(A1, A2) == LinkClass.LAN
    assert t.link(A1, B1) == LinkClass.INTERNET
    assert [t.prices[c] for c in ("lan", "zone", "region", "continent", "internet")] == [0, 0.01, 0.02, 0.05, 0.09]
    assert t.price_per_gb(A1, B1) == 0.09 and t.price_per_gb(A1, A2) == 0.0


def test_pairs_set_class_or_price_both_directions() -> None:
    t = PriceTable.from_config({"zone": 0.03, "default_class": "continent",
                                "pairs": {"dc1": {"aws-eu": "region", "laptop": 0.5}}})
    assert t.link(B1, A1) == LinkClass.REGION and t.price_per_gb(B1, A1) == 0.02
    assert t.link(C1, A1) == LinkClass.CONTINENT and t.price_per_gb(C1, A1) == 0.5
    assert t.price_per_gb(B1, C1) == 0.05
    assert t.prices[LinkClass.ZONE] == 0.03
    flat = PriceTable.from_config({"pairs": {"dc1/aws-eu": "zone"}})
    assert flat.link(A1, B1) == LinkClass.ZONE


@pytest.mark.parametrize("bad", [
    {"lan": -1}, {"internet": "cheap"}, {"default_class": "lan"}, {"pairs": {"dc1": {"x": "galaxy"}}},
    {"pairs": {"noslash": 1.0}}, {"pairs": 3}, {"wan": 0.1}, {"time_weight": float("nan")},
])
def test_bad_config_names_the_problem(bad: dict) -> None:
    with pytest.raises(ConfigError):
        PriceTable.from_config(bad)


def test_formula() -> None:
    c = expected_cost(0.09, GB, 0.1, 1e8, time_weight=0.001, price_weight=1.0)
    assert c == pytest.approx(0.09 + 0.001 * (0.1 + 10))
    assert expected_cost(0.0, 1000, 0.0, 1e3, time_weight=1.0, queued=1000) == pytest.approx(2.0)


def test_own_cluster_beats_other_cluster_by_default() -> None:
    m = CostModel()
    for n in (1, 4096, 4 << 20, 64 << 20):
        assert m.estimate(A1, A2, n).cost < m.estimate(A1, B1, n).cost


def test_rtt_source_and_bandwidth_history_feed_the_estimate() -> None:
    m = CostModel(rtt=lambda a, b: 0.3)
    before = m.estimate(A1, B1, 8 << 20)
    assert before.rtt == 0.3
    m.observe_transfer(A1, B1, 8 << 20, 0.3 + (8 << 20) / 1e8)  # much faster than the default
    after = m.estimate(A1, B1, 8 << 20)
    assert after.bandwidth == pytest.approx(1e8) and after.cost < before.cost
    # another holder in the same cluster inherits the pair's rate
    assert m.estimate(A1, Host("b2", "aws-eu"), 1).bandwidth == pytest.approx(1e8)


@given(st.lists(st.floats(1e3, 1e10), min_size=1, max_size=30))
def test_bandwidth_ewma_stays_within_observed_range(rates: list[float]) -> None:
    b = BandwidthEstimator(alpha=0.3)
    for r in rates:
        b.observe(A1, B1, 1 << 20, (1 << 20) / r)
    est = b.estimate(A1, B1)
    assert est is not None and min(rates) * 0.999 <= est <= max(rates) * 1.001


def test_small_transfers_are_not_bandwidth_samples() -> None:
    b = BandwidthEstimator()
    b.observe(A1, B1, 100, 0.5)
    assert b.estimate(A1, B1) is None
