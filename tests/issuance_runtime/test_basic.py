"""IssuerService on real sockets and SQLite: issue, conflict, node forwarding, restart, where."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from mesh.errors import Conflict
from tests.issuance_runtime.helpers import close_all, draft, make_mesh


def run(coro):
    return uvloop.run(coro)


def test_masters_issue_consecutive_versions_and_nodes_forward(tmp_path):
    async def main():
        hosts = await make_mesh(tmp_path, [("a", "master"), ("a", "master"), ("b", "master"), ("a", "node")])
        try:
            got = []
            for i in range(6):
                host = hosts[i % len(hosts)]
                m = await host.issue(draft("k/one", f"v{i}"))
                got.append(m.version)
                assert m.key == "k/one" and m.verify()
            assert got == [1, 2, 3, 4, 5, 6]
            with pytest.raises(Conflict):
                await hosts[3].issue(draft("k/one", "late"), 2)
            m = await hosts[1].issue(draft("k/one", "cas"), 6)
            assert m.version == 7 and m.parent == 6
            where = hosts[0].service.where("k/one")
            assert where["home"] == where["replicas"][0]["node_id"]
            assert len(where["replicas"]) == 3 and where["reachable"]
            assert where["latest_known"] >= 1
            home = next(h for h in hosts if h.id == where["home"])
            assert home.service.where("k/one")["latest_known"] == 7
            many = await asyncio.gather(*(hosts[i % 3].issue(draft(f"k/{i % 5}", f"c{i}")) for i in range(50)))
            per_key = {}
            for m in many:
                per_key.setdefault(m.key, []).append(m.version)
            assert all(sorted(v) == list(range(1, len(v) + 1)) for v in per_key.values())
        finally:
            await close_all(hosts)
    run(main())


def test_a_commit_the_core_never_answers_fails_after_its_guard_and_leaves_no_waiter(tmp_path):
    """The core answers every commit by its deadline; if it ever did not, the commit still ends, with
    ReplicasUnreachable, five seconds after commit_timeout."""
    import dataclasses
    import time

    from mesh.errors import ReplicasUnreachable
    from tests.issuance_runtime.helpers import SETTINGS

    async def main():
        settings = dataclasses.replace(SETTINGS, commit_timeout=0.5, retry_interval=0.1)
        hosts = await make_mesh(tmp_path, [("a", "master")], settings)
        try:
            service = hosts[0].service
            service.issuer.submit = lambda *args: None  # a core that loses the request
            t = time.monotonic()
            with pytest.raises(ReplicasUnreachable, match="no answer within 0.5 s"):
                await service.issue(draft("g/k", "lost"))
            assert 5.4 <= time.monotonic() - t < 8 and not service._waiters
        finally:
            await close_all(hosts)
    run(main())
