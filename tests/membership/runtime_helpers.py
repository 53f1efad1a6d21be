"""Several GossipService instances in one process on 127.0.0.x, with bounded polling waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from mesh.core.identity import Identity
from mesh.core.membership import Config
from mesh.runtime.gossip import GossipService


def host_identity(i: int) -> Identity:
    return Identity(bytes([i + 1]) * 32)


def service(tmp: Path, i: int, cluster: str = "a", config: Config | None = None, **kw) -> GossipService:
    return GossipService(host_identity(i), config or Config.local(), bind=(f"127.0.0.{i + 1}", 0),
                         cluster=cluster, role="master", http_addr=f"http://127.0.0.{i + 1}:8080",
                         data_dir=tmp / f"host{i}", **kw)


async def wait_for(predicate: Callable[[], bool], limit: float, what: str = "condition") -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what} not reached within {limit} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def states(svc: GossipService) -> dict[str, str]:
    return {m.id: m.state.value for m in svc.members()}


def state_of(services: list[GossipService], node: str) -> set[str]:
    return {states(s).get(node, "unknown") for s in services}


async def mesh(tmp: Path, n: int, clusters: tuple[str, ...] = ("a",)) -> list[GossipService]:
    """Host 0 creates the mesh; the others join it with a token."""
    first = service(tmp, 0, clusters[0])
    await first.start()
    token = first.make_token()
    services = [first]
    for i in range(1, n):
        s = service(tmp, i, clusters[i % len(clusters)])
        await s.start(new_mesh=False)
        await s.join([first.address], token)
        services.append(s)
    ids = {s.id for s in services}
    await wait_for(lambda: all(states(s) == dict.fromkeys(ids, "alive") for s in services), 10, "convergence")
    return services


async def close_all(services: list[GossipService]) -> None:
    await asyncio.gather(*(s.close() for s in services))
