"""The eager geo-replication baseline, in the way of GlusterFS geo-replication.

Each cluster has a server (its host 0). A write goes to the writer's cluster server, which
acknowledges it and then pushes the changed chunks to every other cluster's server. A read is
served by the reader's cluster server if it has a replica of the key (possibly stale, as
geo-replication is asynchronous), else by the server that took the write, across the WAN.
"""

from __future__ import annotations

from mesh.core.manifest import ChunkRef
from sim.content import content_hash
from sim.systems.base import CONTROL_BYTES, Context, Done, System
from sim.workload import Op


class GeorepSystem(System):
    name = "georep"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.servers = {c.name: f"{c.name}/0" for c in ctx.scenario.clusters}
        self.replicas: dict[str, dict[str, tuple[int, tuple[ChunkRef, ...]]]] = {s: {} for s in self.servers.values()}
        self.versions: dict[str, int] = {}
        self.origin: dict[str, str] = {}

    def write(self, op: Op, done: Done) -> None:
        ctx = self.ctx
        cluster = op.host.split("/")[0]
        server = self.servers[cluster]

        def stored() -> None:
            version = self.versions.get(op.key, 0) + 1
            self.versions[op.key] = version
            self.origin[op.key] = server
            self.replicas[server][op.key] = (version, op.chunks)
            ctx.checker.on_issue(ctx.engine.now, op.key, version, content_hash(op.chunks), op.chunks)
            ctx.net.send(server, op.host, CONTROL_BYTES, lambda: done(True, version), "control",
                         on_fail=lambda: done(False, 0))
            for other in self.servers.values():
                if other != server:
                    self._push(server, other, op, version)

        ctx.net.send(op.host, server, op.changed_bytes + CONTROL_BYTES, stored, "data",
                     on_fail=lambda: done(False, 0))

    def _push(self, src: str, dst: str, op: Op, version: int) -> None:
        have = self.replicas[dst].get(op.key, (0, ()))[1]
        known = {c.hash for c in have}
        nbytes = sum(c.size for c in op.chunks if c.hash not in known)

        def applied() -> None:
            if self.replicas[dst].get(op.key, (0, ()))[0] < version:
                self.replicas[dst][op.key] = (version, op.chunks)

        def retry() -> None:
            self.ctx.count("georep_push_retries")
            self.ctx.engine.after(30.0, self._push, src, dst, op, version)

        self.ctx.net.send(src, dst, nbytes + CONTROL_BYTES, applied, "replication", on_fail=retry)

    def read(self, op: Op, done: Done) -> None:
        ctx = self.ctx
        local = self.servers[op.host.split("/")[0]]

        def serve(server: str) -> None:
            entry = self.replicas[server].get(op.key)
            if entry is None:
                origin = self.origin.get(op.key)
                if origin is None or origin == server:
                    ctx.net.send(server, op.host, CONTROL_BYTES, lambda: done(False, 0), "control")
                else:
                    ctx.net.send(op.host, origin, CONTROL_BYTES, lambda: serve(origin), "control",
                                 on_fail=lambda: done(False, 0))
                return
            version, chunks = entry

            def got() -> None:
                ctx.checker.on_read(ctx.engine.now, op.at, op.key, version, chunks, fresh_required=False)
                if version < self.versions.get(op.key, 0):
                    ctx.count("stale_reads")
                done(True, version)

            ctx.net.send(server, op.host, sum(c.size for c in chunks) + CONTROL_BYTES, got, "data",
                         on_fail=lambda: done(False, 0))

        ctx.net.send(op.host, local, CONTROL_BYTES, lambda: serve(local), "control",
                     on_fail=lambda: done(False, 0))
