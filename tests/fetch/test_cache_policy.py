from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.cache_policy import CachePolicy


def test_lru_order_and_touch() -> None:
    p = CachePolicy(quota=30)
    for c in "abc":
        p.add(c, 10)
    p.touch("a")
    assert p.evictions(incoming=10) == ["b"]
    assert p.evictions(incoming=25) == ["b", "c", "a"]


def test_pinned_chunks_are_never_victims_and_unpin_makes_them_recent() -> None:
    p = CachePolicy(quota=30)
    for c in "abc":
        p.add(c, 10)
    p.pin("a", "last_copy")
    p.pin("a", "copy:1")
    assert p.evictions(incoming=30) == ["b", "c"] and p.over_quota(incoming=30)
    p.unpin("a", "last_copy")
    assert "a" not in p.evictions(incoming=30)
    p.unpin("a", "copy:1")
    assert p.evictions(incoming=10) == ["b"] and p.evictions(incoming=30) == ["b", "c", "a"]


def test_pin_before_arrival() -> None:
    p = CachePolicy(quota=10)
    p.pin("x", "last_copy")
    p.add("x", 10)
    assert p.is_pinned("x") and p.evictions(incoming=5) == [] and p.over_quota(5)


def test_bad_sizes_and_reasons() -> None:
    with pytest.raises(ValueError):
        CachePolicy(-1)
    with pytest.raises(ValueError):
        CachePolicy(1).add("a", -1)
    with pytest.raises(ValueError):
        CachePolicy(1).pin("a", "r" * 200)


ops = st.lists(st.tuples(st.sampled_from(["add", "touch", "remove", "pin", "unpin", "evict"]),
                         st.integers(0, 9), st.integers(0, 50)), max_size=80)


@given(st.integers(0, 200), ops)
def test_matches_a_model(quota: int, script: list[tuple[str, int, int]]) -> None:
    p = CachePolicy(quota)
    order: list[str] = []  # the model: every stored chunk, least recent first
    sizes: dict[str, int] = {}
    pins: dict[str, int] = {}
    for op, i, n in script:
        c = f"c{i}"
        if op == "add":
            if c in order:
                order.remove(c)
            order.append(c)
            sizes[c] = n
            p.add(c, n)
        elif op == "touch" and c in order:
            if not pins.get(c):
                order.remove(c)
                order.append(c)
            p.touch(c)
        elif op == "remove":
            if c in order:
                order.remove(c)
                del sizes[c]
            p.remove(c)
        elif op == "pin":
            pins[c] = pins.get(c, 0) + 1
            p.pin(c, f"r{pins[c]}")
        elif op == "unpin" and pins.get(c):
            p.unpin(c, f"r{pins[c]}")
            pins[c] -= 1
            if not pins[c] and c in order:  # back as the most recently used
                order.remove(c)
                order.append(c)
        elif op == "evict":
            victims = p.evictions(incoming=n)
            unpinned = [x for x in order if not pins.get(x)]
            assert victims == unpinned[:len(victims)]
            assert not any(pins.get(v) for v in victims)
            freed = sum(sizes[v] for v in victims)
            fits = sum(sizes.values()) - freed + n <= quota
            assert fits or victims == unpinned
            if victims:  # no victim more than needed
                assert sum(sizes.values()) - (freed - sizes[victims[-1]]) + n > quota
            for v in victims:
                order.remove(v)
                del sizes[v]
                p.remove(v)
        assert p.used == sum(sizes.values()) and len(p) == len(order)
        assert p.over_quota() == (sum(sizes[x] for x in order if pins.get(x)) > quota)
