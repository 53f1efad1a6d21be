"""The NFS-like baseline: one central server; every read and write crosses to its cluster.

Clients keep no cache between reads (as in the thesis's measurement): a read moves the whole
file from the server, a write or edit moves the changed bytes to it.
"""

from __future__ import annotations

from mesh.core.manifest import ChunkRef
from sim.content import content_hash
from sim.systems.base import CONTROL_BYTES, Context, Done, System
from sim.workload import Op


class NfsSystem(System):
    name = "nfs"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.server = ctx.scenario.nfs_server
        self.files: dict[str, tuple[int, tuple[ChunkRef, ...]]] = {}

    def write(self, op: Op, done: Done) -> None:
        ctx = self.ctx

        def stored() -> None:
            version = self.files.get(op.key, (0, ()))[0] + 1
            self.files[op.key] = (version, op.chunks)
            ctx.checker.on_issue(ctx.engine.now, op.key, version, content_hash(op.chunks), op.chunks)
            ctx.net.send(self.server, op.host, CONTROL_BYTES, lambda: done(True, version), "control",
                         on_fail=lambda: done(False, 0))

        ctx.net.send(op.host, self.server, op.changed_bytes + CONTROL_BYTES, stored, "data",
                     on_fail=lambda: done(False, 0))

    def read(self, op: Op, done: Done) -> None:
        ctx = self.ctx

        def serve() -> None:
            if op.key not in self.files:
                ctx.net.send(self.server, op.host, CONTROL_BYTES, lambda: done(False, 0), "control")
                return
            version, chunks = self.files[op.key]

            def got() -> None:
                ctx.checker.on_read(ctx.engine.now, op.at, op.key, version, chunks)
                done(True, version)

            ctx.net.send(self.server, op.host, sum(c.size for c in chunks) + CONTROL_BYTES, got, "data",
                         on_fail=lambda: done(False, 0))

        ctx.net.send(op.host, self.server, CONTROL_BYTES, serve, "control", on_fail=lambda: done(False, 0))
