from __future__ import annotations

import math
import random
import statistics
import struct

import pytest

from mesh.core.vivaldi import Coordinate, Coordinates, VivaldiConfig, update
from mesh.errors import ProtocolError


def _true_rtt(p: tuple[float, float, float], q: tuple[float, float, float]) -> float:
    return math.dist(p[:2], q[:2]) + p[2] + q[2]


def test_coordinates_converge_on_a_synthetic_network() -> None:
    rng = random.Random(7)
    # three "continents" of hosts on a plane (seconds), each host with its own access delay
    centres = [(0.0, 0.0), (0.08, 0.0), (0.0, 0.12)]
    truth = [(cx + rng.uniform(-0.005, 0.005), cy + rng.uniform(-0.005, 0.005), rng.uniform(0.0005, 0.003))
             for cx, cy in centres for _ in range(8)]
    cfg = VivaldiConfig()
    nodes = [Coordinates(cfg) for _ in truth]
    for _ in range(4000):
        i, j = rng.sample(range(len(truth)), 2)
        rtt = _true_rtt(truth[i], truth[j]) * rng.uniform(0.95, 1.05)
        nodes[i].observe(str(j), nodes[j].local, rtt, rng)
    errors = [abs(nodes[i].local.distance_to(nodes[j].local) - _true_rtt(truth[i], truth[j]))
              / _true_rtt(truth[i], truth[j])
              for i in range(len(truth)) for j in range(len(truth)) if i != j]
    assert statistics.median(errors) < 0.15
    assert max(n.local.error for n in nodes) < 0.5


def test_coincident_points_separate_and_height_stays_positive() -> None:
    cfg = VivaldiConfig(dimensions=2)
    a = b = Coordinate.origin(cfg)
    a2 = update(a, b, 0.05, cfg, random.Random(1))
    assert a2.distance_to(b) > 0.0 and a2.height >= cfg.height_min
    shrunk = update(a2, b, 0.0, cfg, random.Random(1))
    assert shrunk.height >= cfg.height_min


def test_estimate_between_any_two_known_hosts() -> None:
    cfg = VivaldiConfig(dimensions=2)
    c = Coordinates(cfg)
    c.learn("x", Coordinate((0.03, 0.04), 0.001, 0.2))
    c.learn("y", Coordinate((0.0, 0.0), 0.002, 0.2))
    assert c.rtt("x", "y") == pytest.approx(0.053)
    assert c.rtt("x", "zz") is None
    assert c.rtt("me", "y", me="me") == pytest.approx(cfg.height_min + 0.002)
    c.forget("x")
    assert c.rtt("x", "y") is None


def test_peer_table_is_bounded() -> None:
    c = Coordinates(VivaldiConfig(dimensions=2, max_peers=3))
    for i in range(10):
        c.observe(str(i), Coordinate((0.01 * i, 0.0), 0.001, 1.0), 0.02, random.Random(i))
    assert [c.get(str(i)) is not None for i in range(10)] == [False] * 7 + [True] * 3


def _f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@pytest.mark.parametrize("wire", [
    None, [[0.0, 0.0], 0.0, 0.0], "x" * 16, _f32(0.0, 0.0, 0.0), _f32(0.0, 0.0, 0.0, 0.0, 0.0), _f32(0, 0, 0, 0)[:-1],
    _f32(0.0, 0.0, 0.0, float("inf")), _f32(0.0, 0.0, float("nan"), 0.0), _f32(-1.0, 0.0, 0.0, 0.0),
    _f32(0.0, -0.5, 0.0, 0.0), _f32(0.0, 0.0, 1e9, 0.0),
])
def test_bad_coordinates_from_the_wire_are_dropped(wire: object) -> None:
    with pytest.raises(ProtocolError):
        Coordinate.from_wire(wire, VivaldiConfig(dimensions=2))


def test_wire_round_trip() -> None:
    cfg = VivaldiConfig(dimensions=2)
    c = Coordinate((0.1, -0.2), 0.003, 0.4)
    back = Coordinate.from_wire(c.to_wire(), cfg)
    assert back.vec == pytest.approx(c.vec, rel=1e-6) and back.height == pytest.approx(c.height, rel=1e-6)
    assert back.error == pytest.approx(c.error, rel=1e-6) and len(c.to_wire()) == 16
    assert Coordinate.from_wire(back.to_wire(), cfg) == back  # float32 values survive exactly


def test_rtt_sample_out_of_range_is_our_bug() -> None:
    cfg = VivaldiConfig(dimensions=2)
    with pytest.raises(ValueError):
        update(Coordinate.origin(cfg), Coordinate.origin(cfg), float("nan"), cfg, random.Random(0))
