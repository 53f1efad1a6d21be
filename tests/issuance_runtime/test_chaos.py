"""8 writers, 20 keys, 3 clusters x 2 masters on real sockets and SQLite, while homes crash (no leave)
and restart from their data dir and a cluster is partitioned off and healed; then every key's history
is checked against everything each writer was acknowledged."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import uvloop

from mesh.core.issuance import majority, manifest_hash
from mesh.core.manifest import Manifest
from mesh.errors import EltonError
from tests.issuance_runtime.helpers import (
    SETTINGS,
    Host,
    close_all,
    draft,
    heal,
    make_mesh,
    partition,
    wait_for,
)

LAYOUT = [(f"c{i // 2}", "master") for i in range(6)]
KEYS = [f"chaos/{i:02d}" for i in range(20)]
WRITERS = 8


@dataclass
class Ledger:
    acks: list[tuple[int, Manifest]] = field(default_factory=list)  # (writer, manifest), in ack order
    errors: list[tuple[str, float]] = field(default_factory=list)  # (message, seconds it took)


async def writer(w: int, hosts: list[Host], stop: asyncio.Event, ledger: Ledger) -> None:
    rng = random.Random(w)
    n = 0
    while not stop.is_set():
        n += 1
        key = rng.choice(KEYS)
        up = [h for h in hosts if h.up]
        host = up[(w + n) % len(up)] if w % 2 else next((h for h in up if h.index == w % 6), up[0])
        d = draft(key, f"w{w}-{n}", author=f"writer{w}")
        start = time.monotonic()
        try:
            m = await host.issue(d)
        except EltonError as exc:
            ledger.errors.append((exc.message, time.monotonic() - start))
            await asyncio.sleep(0.02)
            continue
        assert (m.key, m.content_hash) == (key, d.content_hash)
        ledger.acks.append((w, m))


def home(hosts: list[Host], key: str) -> Host:
    ref = next(h for h in hosts if h.up)
    node = ref.service.issuer.home_of(key)
    return next(h for h in hosts if h.id == node)


async def all_alive(hosts: list[Host]) -> None:
    ids = {h.id for h in hosts}
    await wait_for(lambda: all(h.up and h.service._live == ids for h in hosts), 15, "every master alive everywhere")


async def crash_and_restart(hosts: list[Host], victim: Host, down: float) -> None:
    await victim.crash()
    others = [h for h in hosts if h.up]
    await wait_for(lambda: all(victim.id not in h.service._live for h in others), 10, "death seen")
    await asyncio.sleep(down)
    await victim.start()
    await all_alive(hosts)


def test_histories_match_every_acknowledgement_through_crashes_and_a_partition(tmp_path):
    async def main():
        hosts = await make_mesh(tmp_path, LAYOUT)
        ledger = Ledger()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(writer(w, hosts, stop, ledger)) for w in range(WRITERS)]
        try:
            await asyncio.sleep(1.5)
            first = home(hosts, KEYS[0])
            await crash_and_restart(hosts, first, 1.0)
            await asyncio.sleep(1.0)
            second = home(hosts, next(k for k in KEYS if home(hosts, k) is not first))
            await crash_and_restart(hosts, second, 1.0)
            await asyncio.sleep(1.0)
            acked_before_cut = len(ledger.acks)
            partition(hosts, {0, 1})  # cluster c0 alone
            await asyncio.sleep(2.5)
            await heal(hosts)
            await all_alive(hosts)
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        try:
            assert len(ledger.acks) > 200 and len(ledger.acks) > acked_before_cut
            check_ledger(ledger)
            await check_histories(hosts, ledger)
        finally:
            await close_all(hosts)
    uvloop.run(main())


def check_ledger(ledger: Ledger) -> None:
    by_slot: dict[tuple[str, int], bytes] = {}
    last: dict[tuple[int, str], int] = {}
    for w, m in ledger.acks:
        blob = m.encode()
        assert by_slot.setdefault((m.key, m.version), blob) == blob, f"{m.key}@{m.version} acknowledged twice"
        assert m.version > last.get((w, m.key), 0), f"writer {w} saw {m.key} go back to {m.version}"
        last[(w, m.key)] = m.version
    bound = SETTINGS.commit_timeout + 1.5
    slow = [(msg, took) for msg, took in ledger.errors if took > bound]
    assert not slow, f"failures slower than {bound} s: {slow[:3]}"
    unreachable = [msg for msg, _ in ledger.errors if "unreachable" in msg]
    assert unreachable, "the partition made no commit fail"
    assert any("home" in msg for msg in unreachable)


async def check_histories(hosts: list[Host], ledger: Ledger) -> None:
    acked: dict[tuple[str, int], str] = {(m.key, m.version): manifest_hash(m.encode()) for _, m in ledger.acks}
    top = {}
    for key, version in acked:
        top[key] = max(top.get(key, 0), version)
    for key in KEYS:  # the counter never goes back: a new commit lands above every acknowledged version
        m = await hosts[0].issue(draft(key, f"final-{key}"))
        assert m.version > top.get(key, 0), f"{key}: issued {m.version} after {top.get(key)} was acknowledged"
    ref = hosts[0].service.issuer
    for (key, version), mhash in acked.items():
        held = {h.id: e for h in hosts for e in h.service.store.accepted(key) if e.version == version}
        replicas = ref.replica_set(key)
        holding = [n for n in replicas if n in held and held[n].manifest_hash == mhash]
        assert len(holding) >= majority(len(replicas)), f"{key}@{version} held by {len(holding)} of {replicas}"
        newest = max(held.values(), key=lambda e: e.ballot)
        assert newest.manifest_hash == mhash, f"{key}@{version}: a later ballot carries other content"
