"""Masters and nodes in one process on 127.0.0.x: GossipService + MetaStore + IssuerService each,
real sockets and real SQLite; crash (close without leave) and restart from the same data dir;
partitions by dropping a host's traffic to and from the other group in the gossip layer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from mesh.core.identity import Identity
from mesh.core.manifest import Draft
from mesh.core.membership import Config
from mesh.errors import EltonError
from mesh.runtime.gossip import GossipService
from mesh.runtime.issuance import IssuanceSettings, IssuerService
from mesh.store.meta import MetaStore
from tests.membership.runtime_helpers import wait_for

GOSSIP = Config.local()
SETTINGS = IssuanceSettings(replicas=3, replica_scope="mesh", commit_timeout=2.0, retry_interval=0.1,
                            send_timeout=1.0, poll_interval=0.05, pending_retry=0.2)


def identity(i: int) -> Identity:
    return Identity(bytes([i + 1]) * 32)


def ip(i: int) -> str:
    return f"127.0.0.{i + 1}"




@dataclass
class Host:
    """One simulated eltond: its gossip, its metadata store and its issuance service."""

    index: int
    cluster: str
    role: str
    root: Path
    settings: IssuanceSettings = SETTINGS
    blocked: set[str] = field(default_factory=set)  # IPs whose traffic this host drops (partition)
    gossip: GossipService | None = None
    meta: MetaStore | None = None
    service: IssuerService | None = None
    port: int = 0

    @property
    def id(self) -> str:
        return identity(self.index).node_id

    @property
    def dir(self) -> Path:
        return self.root / f"host{self.index}"

    @property
    def up(self) -> bool:
        return self.service is not None

    async def start(self, new_mesh: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        gossip = GossipService(identity(self.index), GOSSIP, bind=(ip(self.index), self.port),
                               cluster=self.cluster, role=self.role, http_addr=f"http://{ip(self.index)}:8080",
                               data_dir=self.dir)
        self._install_filter(gossip)
        await gossip.start(new_mesh=new_mesh)
        assert gossip.address is not None
        self.port = gossip.address[1]  # a restart binds the same address, as a daemon would
        self.gossip = gossip
        self.meta = MetaStore(self.dir / "meta.sqlite")
        self.service = IssuerService(identity(self.index), gossip, self.meta, self.settings)
        self._install_stream_filter(self.service)
        await self.service.start()

    def _install_filter(self, gossip: GossipService) -> None:
        """Drop datagrams from, and refuse requests to, blocked IPs (both directions between groups)."""
        on_datagram = gossip._on_datagram
        request = gossip.request

        def filtered_datagram(data: bytes, addr: tuple[str, int]) -> None:
            if addr[0] not in self.blocked:
                on_datagram(data, addr)

        async def filtered_request(addr: tuple[str, int], kind: str, body: Any, timeout: float = 10.0) -> Any:
            if addr[0] in self.blocked:
                await asyncio.sleep(0)
                raise ConnectionRefusedError(f"partitioned from {addr[0]}")
            return await request(addr, kind, body, timeout)

        gossip._on_datagram = filtered_datagram  # type: ignore[method-assign]
        gossip.request = filtered_request  # type: ignore[method-assign]

    def _install_stream_filter(self, service: IssuerService) -> None:
        """Issuance frames stream over long-lived connections: refuse to open one to, or to write on
        one already open to, a blocked IP (a cut link loses what is in flight, the core resends)."""
        open_, write = service._open_stream, service._write_frame

        async def filtered_open(addr: tuple[str, int]) -> Any:
            if addr[0] in self.blocked:
                await asyncio.sleep(0)
                raise ConnectionRefusedError(f"partitioned from {addr[0]}")
            return await open_(addr)

        def filtered_write(writer: asyncio.StreamWriter, addr: tuple[str, int], data: bytes) -> None:
            if addr[0] in self.blocked:
                raise ConnectionResetError(f"partitioned from {addr[0]}")
            write(writer, addr, data)

        service._open_stream = filtered_open  # type: ignore[method-assign]
        service._write_frame = filtered_write  # type: ignore[method-assign]

    async def crash(self) -> None:
        """Like kill -9: no leave, no hand-off; only what reached the disk survives."""
        service, gossip, meta = self.service, self.gossip, self.meta
        self.service = self.gossip = self.meta = None
        if service is not None:
            await service.close()
        if gossip is not None:
            await gossip.close()
        if meta is not None:
            meta.close()

    async def issue(self, draft: Draft, parent: int | None = None) -> Any:
        assert self.service is not None
        return await self.service.issue(draft, parent)


async def make_mesh(root: Path, layout: list[tuple[str, str]], settings: IssuanceSettings = SETTINGS) -> list[Host]:
    """Host 0 creates the mesh, the others join with a token; wait until every master agrees on the roster."""
    hosts = [Host(i, cluster, role, root, settings) for i, (cluster, role) in enumerate(layout)]
    await hosts[0].start(new_mesh=True)
    first = hosts[0].gossip
    assert first is not None and first.address is not None
    token = first.make_token()
    for host in hosts[1:]:
        await host.start()
        assert host.gossip is not None
        await host.gossip.join([first.address], token)
    masters = sum(1 for _, role in layout if role in ("master", "both"))
    await wait_for(lambda: all(h.service is not None and h.service.roster is not None
                               and len(h.service.roster.masters) == masters
                               and len(h.service._live) == masters for h in hosts), 15, "roster convergence")
    # every host admits every other (certificates spread by gossip after each join): a frame from a
    # host whose certificate has not arrived yet is dropped as unadmitted
    ids = [h.gossip.id for h in hosts]
    await wait_for(lambda: all(h.gossip.admission is not None and all(h.gossip.admission.status(i) == "admitted"
                                                                      for i in ids) for h in hosts),
                   15, "admission convergence")
    return hosts


async def close_all(hosts: list[Host]) -> None:
    for host in hosts:
        with contextlib.suppress(Exception):
            await host.crash()


def partition(hosts: list[Host], group: set[int]) -> None:
    """Cut every link between ``group`` (host indexes) and the other hosts."""
    inside = {ip(h.index) for h in hosts if h.index in group}
    outside = {ip(h.index) for h in hosts if h.index not in group}
    for h in hosts:
        h.blocked = set(outside if h.index in group else inside)


async def heal(hosts: list[Host], limit: float = 10.0) -> None:
    """Restore every link, then push-pull across the former cut until every host sees the others alive.

    The gossip layer push-pulls only with members it holds alive, and a host never refutes a 'dead' about
    itself heard in a push-pull, so after a cut the halves do not re-merge by themselves; push-pulls
    across the cut let each side relay the other's 'dead' as a suspicion, which its subject refutes.
    A lone host has nobody to relay: its side never hears it was declared dead (reported upstream)."""
    cut = {h.index: set(h.blocked) for h in hosts}
    for h in hosts:
        h.blocked.clear()
    start = time.monotonic()
    while not all(h.service is None or h.service._live >= {g.id for g in hosts if g.up} for h in hosts):
        if time.monotonic() - start > limit:
            raise AssertionError(f"the mesh did not re-merge within {limit} s")
        for h in hosts:
            peers = [g.gossip.address for g in hosts if ip(g.index) in cut[h.index] and g.gossip is not None]
            if h.gossip is not None and peers:
                with contextlib.suppress(EltonError):
                    await h.gossip.join(peers)
        await asyncio.sleep(0.3)


def draft(key: str, tag: str, author: str = "writer") -> Draft:
    return Draft(key=key, size=0, content_hash=blake3.blake3(tag.encode()).hexdigest(), chunks=(),
                 author=author)
