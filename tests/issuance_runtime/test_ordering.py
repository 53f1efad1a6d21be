"""Persist before send: nothing an Issuer says after a Persist (an Accepted, a Done) leaves before the
records are durable, on the home and on the replicas."""

from __future__ import annotations

import asyncio

import uvloop

from tests.issuance_runtime.helpers import close_all, draft, make_mesh

THREE = [("a", "master"), ("b", "master"), ("c", "master")]


def gate(host) -> asyncio.Event:
    """Hold every issuance write of ``host`` until the returned event is set."""
    opened = asyncio.Event()
    save = host.service.store.save

    async def gated(records):
        await opened.wait()
        await save(records)

    host.service.store.save = gated
    return opened


def test_acknowledgements_wait_for_the_records_they_depend_on(tmp_path):
    async def main():
        hosts = await make_mesh(tmp_path, THREE)
        try:
            key = "o/k"
            assert (await hosts[0].issue(draft(key, "warm"))).version == 1  # prepared: later commits only accept
            home = next(h for h in hosts if h.id == hosts[0].service.issuer.home_of(key))
            others = [h for h in hosts if h is not home]
            for held in ([home], others):
                gates = [gate(h) for h in held]
                task = asyncio.create_task(home.issue(draft(key, f"held-{len(held)}")))
                await asyncio.sleep(0.4)
                assert not task.done(), f"acknowledged before {len(held)} host(s) made it durable"
                for g in gates:
                    g.set()
                assert (await asyncio.wait_for(task, 3)).version >= 2
        finally:
            await close_all(hosts)
    uvloop.run(main())
