"""The push-pull period stretches with the mesh's size (memberlist's rule)."""

from __future__ import annotations

from mesh.core.membership import Config
from mesh.core.membership.config import push_pull_interval
from tests.membership.simnet import SimNet


def test_push_pull_stretches_with_the_mesh_so_its_bandwidth_per_member_stays_flat() -> None:
    cfg = Config.lan()
    assert push_pull_interval(cfg, 1) == push_pull_interval(cfg, 32) == cfg.push_pull_interval
    assert push_pull_interval(cfg, 33) == 2 * cfg.push_pull_interval
    assert push_pull_interval(cfg, 64) == 2 * cfg.push_pull_interval
    assert push_pull_interval(cfg, 1000) == 6 * cfg.push_pull_interval
    # an exchange carries every member: its bytes per member per second grow as n / log n, not as n
    assert 1000 / push_pull_interval(cfg, 1000) <= (1000 / cfg.push_pull_interval) / 5


def count_push_pulls(members: int, duration: float) -> int:
    net = SimNet(Config.lan().with_(push_pull_interval=10.0))
    for n in range(members):
        net.add(n)
    calls = 0
    real = net.push_pull

    def counting(src, dst):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        real(src, dst)
    net.push_pull = counting  # type: ignore[method-assign]
    net.run(duration)
    return calls


def test_the_core_push_pulls_less_often_in_a_larger_mesh() -> None:
    small, large = count_push_pulls(8, 60.0), count_push_pulls(40, 60.0)
    # 8 members: one each per 10 s; 40 members (past 32): one each per 20 s
    assert 8 * 5 <= small <= 8 * 7
    assert 40 * 2 <= large <= 40 * 4
