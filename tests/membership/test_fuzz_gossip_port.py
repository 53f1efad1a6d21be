"""Fuzz a live gossip port: every bad datagram or stream is dropped and counted; the view stays unchanged.

A three-host mesh runs on a uvloop in a background thread; hypothesis sends from a plain socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mesh.core.admission import issue_certificate
from mesh.core.codec import VERSION, pack, seal
from mesh.core.identity import Identity
from mesh.core.membership import Datagram
from mesh.core.membership.messages import CertUpdate, Ping
from mesh.errors import ProtocolError
from mesh.runtime.gossip import FRAME_HEADER
from tests.membership.runtime_helpers import service, states, wait_for

GHOST = Identity(b"g" * 32)  # admitted, but no host runs it: the test controls its sequence numbers
STRANGER = Identity(b"s" * 32)  # never admitted


class LiveMesh:
    def __init__(self, tmp: Path) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.recorded: list[bytes] = []
        self.ghost_seq = 1 << 40
        self.services = self.call(self._start(tmp))
        self.target = self.services[0]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def call(self, coro, timeout: float = 20.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, tmp: Path):
        first = service(tmp, 0, rate=1e9, burst=1e9)
        await first.start()
        token = first.make_token()
        services = [first]
        for i in (1, 2):
            s = service(tmp, i)
            await s.start(new_mesh=False)
            await s.join([first.address], token)
            services.append(s)
        ids = {s.id for s in services}
        await wait_for(lambda: all(set(states(s)) == ids for s in services), 10)
        cert = issue_certificate(first.admin, GHOST.public_key, "a", "master", time.time())
        first.core.admit(CertUpdate(cert), first._now())
        first._pump()
        udp, real_send = services[1]._udp, services[1]._udp.send

        async def recording_send(data: bytes, addr) -> None:
            if addr == first.address and len(self.recorded) < 500:
                self.recorded.append(data)
            await real_send(data, addr)
        udp.send = recording_send
        await asyncio.sleep(0.3)
        return services

    def view(self) -> list[tuple[str, str, int]]:
        return [(m.id, m.state.value, m.incarnation) for m in self.target.members()]

    def dropped(self) -> int:
        return sum(self.target.drops.values())

    def next_ghost_seq(self) -> int:
        self.ghost_seq += 1
        return self.ghost_seq

    def close(self) -> None:
        self.sock.close()
        async def close_all() -> None:
            await asyncio.wait_for(asyncio.gather(*(s.close() for s in self.services)), 10)
        self.call(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveMesh]:
    m = LiveMesh(tmp_path_factory.mktemp("fuzz"))
    yield m
    m.close()


def valid_body() -> list:
    return Datagram(Ping(1, "00" * 20), ()).to_wire()


wire_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=30),
              st.binary(max_size=80), st.sampled_from(["swim", "ping", "ack", "alive", "dead", "cert"])),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=25)


@st.composite
def bad_datagrams(draw) -> tuple[str, object]:
    """(expected reason or '*', a recipe the test turns into bytes with the live mesh's state)."""
    kind = draw(st.sampled_from(["raw", "msgpack", "truncated", "flipped", "oversized", "unadmitted",
                                 "bad_body", "unknown_kind", "bad_version", "replayed"]))
    if kind == "raw":
        return "*", draw(st.binary(min_size=0, max_size=1500))
    if kind == "msgpack":
        return "*", pack(draw(wire_values))
    if kind == "truncated":
        return "*", ("cut", draw(st.integers(0, 150)))
    if kind == "flipped":
        return "*", ("flip", draw(st.integers(0, 150)), draw(st.integers(1, 255)))
    if kind == "bad_body":
        body = draw(wire_values)
        try:
            Datagram.from_wire(body)
            assume(False)
        except ProtocolError:
            pass
        return "bad_message", ("ghost", "swim", body)
    if kind == "replayed":
        return "replayed", ("replay", draw(st.integers(0, 10_000)))
    return {"oversized": "oversized", "unadmitted": "unadmitted", "unknown_kind": "unknown_kind",
            "bad_version": "bad_version"}[kind], (kind,)


def build(live: LiveMesh, recipe) -> bytes:
    if isinstance(recipe, bytes):
        return recipe
    tag = recipe[0]
    good = seal(GHOST, "swim", live.next_ghost_seq(), valid_body())
    if tag == "cut":
        return good[: recipe[1] % len(good)]
    if tag == "flip":
        data = bytearray(good)
        data[recipe[1] % len(data)] ^= recipe[2]
        return bytes(data)
    if tag == "ghost":
        return seal(GHOST, recipe[1], live.next_ghost_seq(), recipe[2])
    if tag == "oversized":
        return seal(GHOST, "swim", live.next_ghost_seq(), [None, [], b"x" * 1500])
    if tag == "unadmitted":
        return seal(STRANGER, "swim", 1, valid_body())
    if tag == "unknown_kind":
        return seal(GHOST, "gossip?", live.next_ghost_seq(), valid_body())
    if tag == "bad_version":
        head = [VERSION + 1, "swim", GHOST.public_key, live.next_ghost_seq(), valid_body()]
        return pack(head + [GHOST.sign(pack(head))])
    assert tag == "replay" and live.recorded
    return live.recorded[recipe[1] % len(live.recorded)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(bad_datagrams())
def test_bad_datagrams_are_dropped_and_counted_and_the_view_is_unchanged(live, case):
    reason, recipe = case
    view = live.view()
    data = build(live, recipe)
    before, by_reason = live.dropped(), dict(live.target.drops)
    live.sock.sendto(data, live.target.address)
    deadline = time.monotonic() + 2
    while live.dropped() == before:
        assert time.monotonic() < deadline, f"not dropped: {data[:40]!r}"
        time.sleep(0.001)
    assert live.dropped() == before + 1
    after = live.target.drops
    grew = [r for r in after if after[r] != by_reason.get(r, 0)]
    assert grew and "internal_error" not in grew
    if reason != "*":
        assert grew == [reason]
    assert live.view() == view


def test_garbage_on_the_stream_port_is_dropped_and_the_port_keeps_serving(live):
    before = dict(live.target.drops)
    host, port = live.target.address
    payloads = [b"", b"\x00\x00", FRAME_HEADER.pack(1 << 30), FRAME_HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1",
                FRAME_HEADER.pack(3) + b"ab", FRAME_HEADER.pack(10) + seal(STRANGER, "push_pull", 1, {})[:10]]
    for p in payloads:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(p)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""
    unadmitted = seal(STRANGER, "push_pull", 1, {"members": [], "certificates": [], "revocations": []})
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(FRAME_HEADER.pack(len(unadmitted)) + unadmitted)
        assert s.recv(100) == b""
    time.sleep(0.2)
    after = live.target.drops
    assert sum(after.values()) - sum(before.values()) == len(payloads) + 1
    assert after.get("unadmitted", 0) > before.get("unadmitted", 0)
    assert after.get("oversized", 0) > before.get("oversized", 0)
    ids = {s.id for s in live.services}
    assert {m.id for m in live.target.members() if m.state.value == "alive"} == ids


def send_and_wait(live: LiveMesh, data: bytes) -> list[str]:
    before, by_reason = live.dropped(), dict(live.target.drops)
    live.sock.sendto(data, live.target.address)
    deadline = time.monotonic() + 2
    while live.dropped() == before:
        assert time.monotonic() < deadline, "not dropped"
        time.sleep(0.001)
    return [r for r, n in live.target.drops.items() if n != by_reason.get(r, 0)]


@pytest.mark.parametrize("recipe,reason", [
    (b"\xc1", "malformed"), (("cut", 60), "malformed"), (("flip", 140, 1), "bad_signature"),
    (("oversized",), "oversized"), (("unadmitted",), "unadmitted"), (("unknown_kind",), "unknown_kind"),
    (("bad_version",), "bad_version"), (("ghost", "swim", {"a": 1}), "bad_message"), (("replay", 0), "replayed"),
])
def test_each_kind_of_bad_datagram_is_counted_under_its_reason(live, recipe, reason):
    view = live.view()
    assert send_and_wait(live, build(live, recipe)) == [reason]
    assert live.view() == view


def test_a_flood_from_one_source_is_rate_limited(tmp_path):
    async def main():
        from mesh.core.membership import Config
        s = service(tmp_path, 7, config=Config.local(), rate=10, burst=5)
        await s.start()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(50):
                sock.sendto(b"\xc1", s.address)
            sock.close()
            await wait_for(lambda: sum(s.drops.values()) == 50, 2)
            assert s.drops["malformed"] <= 6 and s.drops["rate_limited"] >= 44
        finally:
            await s.close()
    uvloop.run(main())
