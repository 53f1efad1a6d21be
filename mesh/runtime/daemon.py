"""eltond: one process that holds a data dir and serves the node API (and, with the mesh, gossip).

``run_daemon`` can be embedded and stopped by setting an event (after hypercorn's serve); ``serve``
runs it on uvloop and returns an exit code.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import time
from typing import Any

import uvloop
from aiohttp import web

from mesh.config import Config, parse_hostport
from mesh.core.identity import Identity
from mesh.core.membership import Config as GossipConfig
from mesh.errors import ConfigError, EltonError
from mesh.runtime.datadir import DataDir
from mesh.runtime.durability import ChunkReplicator
from mesh.runtime.fetch import MeshRemote
from mesh.runtime.gossip import GossipService
from mesh.runtime.holders import HolderService, held_chunks
from mesh.runtime.http_api import Api
from mesh.runtime.issuance import IssuanceSettings, IssuerService, PendingCommits
from mesh.runtime.issuance_store import PendingStore
from mesh.runtime.repository import Repository
from mesh.runtime.transfer import ChunkServer

log = logging.getLogger("elton.daemon")
DRAIN_SECONDS = 10.0
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython: 700)
VERSION = "0.1.0"


async def run_daemon(config: Config, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before anything announces that we are ready
        loop.add_signal_handler(sig, stop.set)
    datadir = DataDir(config.data_dir)
    datadir.create()
    datadir.lock()
    repo: Repository | None = None
    runner: web.AppRunner | None = None
    gossip: GossipService | None = None
    issuer: IssuerService | None = None
    pending: PendingCommits | None = None
    holders: HolderService | None = None
    try:
        identity = datadir.identity()
        repo = Repository(config.data_dir, identity, clock=time.time,
                          cache_quota=config.cache_quota_bytes(shutil.disk_usage(config.data_dir).total))
        started_at = time.time()
        http_host, http_port = config.http_addr
        info: dict[str, Any] = {}

        def status() -> dict[str, Any]:
            assert repo is not None
            chunks, stored = repo.meta.usage()
            keys, versions = repo.meta.counts()
            disk = shutil.disk_usage(config.data_dir)
            return {
                **info,
                "role": config.role,
                "cluster": config.cluster,
                "data_dir": str(config.data_dir),
                "uptime_s": round(time.time() - started_at, 3),
                "store": {"chunks": chunks, "bytes": stored, "keys": keys, "versions": versions,
                          "disk_free": disk.free, "disk_total": disk.total},
                "cache": repo.cache.stats(),
                **({"issuance": issuer.info()} if issuer is not None else {}),
            }

        api = Api(repo, status, config.max_object_size, http_token=config.http_token)
        runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=DRAIN_SECONDS,
                               handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, http_host, http_port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on http {config.http}: {exc.strerror}") from exc
        bound = _bound_port(site)
        gossip = await start_gossip(config, identity, http_advertised=f"{_url_host(http_host)}:{bound}")
        ChunkServer(gossip, repo.chunks, repo.executor, cache=repo.cache)
        holders = HolderService(gossip, held_chunks(repo.meta))
        await holders.start()
        repo.on_stored = holders.on_chunks_stored
        repo.cache.on_removed = holders.on_chunks_removed  # evicted copies: masters stop sending readers here
        repo.cache.last_copy = holders.last_copies  # a copy no other live host holds is never evicted
        repo.before_issue = ChunkReplicator(gossip, repo, config.copies, config.copies_scope,
                                            on_stored=holders.on_chunks_stored).ensure
        issuer = IssuerService(identity, gossip, repo.meta, IssuanceSettings(
            replicas=config.replicas, replica_scope=config.replica_scope, commit_timeout=config.commit_timeout))
        await issuer.start()
        pending = PendingCommits(PendingStore(repo.meta), issuer.issue, on_issued=repo.learn,
                                 reachable=issuer.reachable)
        await pending.start()
        repo.issuer = pending.hook()
        repo.remote = MeshRemote(gossip, repo, holders, issuer=issuer, costs=config.costs)
        api.gossip, api.issuer, api.pending, api.remote, api.holders = gossip, issuer, pending, repo.remote, holders
        info.update({
            "node_id": identity.node_id,
            "pid": os.getpid(),
            "http": f"{http_host}:{bound}",
            "http_url": f"http://{_url_host(http_host)}:{bound}",
            "gossip": f"{gossip.address[0]}:{gossip.address[1]}" if gossip.address else config.gossip,
            "mesh_id": gossip.mesh_id,
            "version": VERSION,
            "started_at": started_at,
        })
        datadir.write_runtime({**info, "role": config.role, "cluster": config.cluster})
        gc.freeze()  # what start-up built lives as long as the daemon: later collections skip it
        log.warning("eltond ready", extra={"node_id": identity.node_id, "http": info["http"]})
        await stop.wait()
        log.warning("eltond stopping: draining requests")
    finally:
        if pending is not None:
            await pending.close()
        if issuer is not None:
            await issuer.close()
        if holders is not None:
            await holders.close()
        if gossip is not None:
            await gossip.leave()  # a graceful stop tells the mesh at once instead of waiting for suspicion
        if runner is not None:
            await runner.cleanup()
        if repo is not None:
            repo.close()
        datadir.clear_runtime()
        datadir.unlock()


async def start_gossip(config: Config, identity: Identity, http_advertised: str) -> GossipService:
    """Listen on the gossip address; create a mesh, or join one with --join (and --token the first time)."""
    profile = {"lan": GossipConfig.lan, "wan": GossipConfig.wan, "local": GossipConfig.local}[config.gossip_profile]()
    advertise = parse_hostport(config.advertise, "advertise") if config.advertise else None
    gossip = GossipService(identity, profile, bind=config.gossip_addr, cluster=config.cluster, role=config.role,
                           http_addr=http_advertised, data_dir=config.data_dir, advertise=advertise)
    try:
        await gossip.start(new_mesh=not config.join)
    except OSError as exc:
        await gossip.close()
        raise ConfigError(f"cannot listen on gossip {config.gossip}: {exc.strerror}") from exc
    if config.join:
        try:
            await gossip.join(config.join, config.token)
        except EltonError as exc:
            if not gossip.joined:  # first start: without the mesh there is nothing to serve
                await gossip.close()
                raise
            log.warning("rejoin through %s failed (%s); saved peers will be retried", config.join, exc.message)
    return gossip


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; port 0 asks the OS for one
    if server is not None and server.sockets:
        return int(server.sockets[0].getsockname()[1])
    raise ConfigError("http listener has no socket")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    try:
        socket.inet_pton(socket.AF_INET6, host)
        return f"[{host}]"
    except OSError:
        return host


def serve(config: Config) -> int:
    # Fewer, later garbage collections: a commit allocates a few hundred short-lived objects, and
    # at the default threshold (700) the collector ran every few commits and took 2-3% of the
    # daemon's CPU. Nearly all of them are freed by reference counting; cycles wait a little longer.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_daemon(config))
    return 0
