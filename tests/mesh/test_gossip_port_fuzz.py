"""A real eltond's gossip port under garbage: everything dropped and counted, the daemon unchanged."""

from __future__ import annotations

import json
import os
import random
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.core.codec import MAX_DATAGRAM, seal
from mesh.core.identity import Identity


def gossip_addr(d) -> tuple[str, int]:
    info = json.loads((d.data_dir / "eltond.json").read_text())
    host, port = info["gossip"].rsplit(":", 1)
    return host, int(port)


def drops(d) -> int:
    return sum(d.client()._json("GET", "/v1/mesh")["drops"].values())


def test_bad_datagrams_are_dropped_and_counted(eltond):
    addr = gossip_addr(eltond)
    before_view = eltond.client().members()["members"]
    before = drops(eltond)
    stranger = Identity(os.urandom(32))
    rng = random.Random(7)
    valid = seal(stranger, "ping", 1, {"x": 1})
    datagrams = [
        b"",
        b"\xc1" * 50,                                    # not msgpack
        os.urandom(MAX_DATAGRAM + 100)[:1500],           # oversized
        valid[: len(valid) // 2],                        # truncated
        valid[:-1] + bytes([valid[-1] ^ 1]),             # bad signature
        valid,                                           # a key nobody admitted
        valid,                                           # ... and replayed
        seal(stranger, "push_pull", 2, [1] * 10),
        *[bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 1200))) for _ in range(100)],
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, addr)
    deadline = 50
    while drops(eltond) < before + len(datagrams) - 1 and deadline:  # an empty datagram may not arrive
        deadline -= 1
        __import__("time").sleep(0.1)
    assert drops(eltond) >= before + len(datagrams) - 1
    assert eltond.client().health()["ok"]
    assert eltond.client().members()["members"] == before_view


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=1400))
def test_random_bytes_never_take_the_daemon_down(shared_eltond, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, gossip_addr(shared_eltond))
    with socket.create_connection(gossip_addr(shared_eltond), timeout=5) as t:  # and the TCP side
        t.sendall(data)
    assert shared_eltond.alive()
