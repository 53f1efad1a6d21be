"""The node's HTTP API (aiohttp). Application-facing; on loopback by default.

A versioned GET is immutable, so it carries ``Cache-Control: immutable`` and the content hash as
its ETag: any standard HTTP cache in front of a node is a correct CDN. The latest-version GET is
``no-store`` and names the version it served in ``X-Elton-Version``.

Paths ending in ``/versions`` or ``/versions/{N|latest}`` under ``/v1/keys/`` are metadata; the
content of any key, including one whose last segment is ``versions``, is also at ``/v1/data/{key}``.
"""

from __future__ import annotations

import hmac
import logging
import re
import sqlite3
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mesh.core.identity import NODE_ID_BYTES
from mesh.core.manifest import ChunkRef, Manifest
from mesh.errors import (
    EltonError,
    IncompleteUpload,
    InvalidRequest,
    RangeNotSatisfiable,
    StorageFull,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from mesh.runtime.fetch import MeshRemote
from mesh.runtime.gossip import GossipService
from mesh.runtime.holders import HolderService
from mesh.runtime.issuance import IssuerService, PendingCommits, queue_commits
from mesh.runtime.metrics import render_prometheus
from mesh.runtime.openapi import OPENAPI
from mesh.runtime.repository import MAX_CHUNK_UPLOAD, Repository
from mesh.store.chunks import check_hash

log = logging.getLogger("elton.http")

IMMUTABLE = "public, max-age=31536000, immutable"
READ_SIZE = 1024 * 1024
MAX_LIST = 10_000
MAX_MISSING_QUERY = 100_000
MAX_JSON_BODY = 64 * 1024 * 1024
MAX_DURABLE_CHUNKS = 500_000  # a commit's "durable" list: about 40 MB of JSON at most
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def manifest_summary(m: Manifest) -> dict[str, Any]:
    d = m.to_json()
    d.pop("chunks")
    d["chunk_count"] = len(m.chunks)
    return d


def _chunk_ref(c: Any) -> ChunkRef:
    """A chunk of a commit body: ``[hash, size]`` or ``{"hash": h, "size": n}``."""
    if isinstance(c, dict):
        return ChunkRef(str(c["hash"]), int(c["size"]))
    return ChunkRef(str(c[0]), int(c[1]))


def _int_param(request: web.Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise InvalidRequest(f"{name} must be an integer >= {minimum}, not {raw!r}")
    return int(raw)


def _author_param(value: object) -> str | None:
    """``author`` of a chunk read: the node id of a host likely to hold the chunks (the author of
    the version naming them), tried for chunks no master knows a holder of yet."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) != 2 * NODE_ID_BYTES or value.strip(string.hexdigits):
        raise InvalidRequest(f"author must be a node id ({2 * NODE_ID_BYTES} hex digits), not {value!r}")
    return value.lower()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) for a single byte range, None to serve the whole body."""
    m = _RANGE.match(header.strip())
    if not m:
        return None  # multi-range or other units: allowed to ignore, we serve the whole body
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable(f"empty suffix range; size is {size}")
        return max(0, size - n), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"{header} of {size} bytes")
    return start, end


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EltonError as exc:
        if exc.http_status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, exc.message)
        return web.json_response(exc.to_json(), status=exc.http_status)
    except web.HTTPException:
        raise
    except sqlite3.OperationalError as exc:
        if "full" in str(exc):
            err = StorageFull("the metadata store could not grow")
            return web.json_response(err.to_json(), status=err.http_status)
        log.exception("metadata error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal", "message": f"internal error: {exc}"}, status=500)
    except Exception as exc:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal", "message": f"internal error: {exc}"}, status=500)


def token_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Require ``Authorization: Bearer <token>`` (the API is exposed beyond loopback)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if request.path != "/v1/health" and not hmac.compare_digest(given, expected):
            raise Unauthorized("this API needs 'Authorization: Bearer <http_token>'")
        return await handler(request)

    return check


async def stream_body(request: web.Request, resp: web.StreamResponse, chunks: AsyncIterator[bytes],
                      what: str) -> web.StreamResponse:
    """Send verified chunks as a response body.

    The first chunk is read and verified before the status line goes out, so a missing or corrupt
    small object gets a clean error; a later bad chunk cuts the connection (the client sees a
    short body) and its bytes are never sent."""
    try:
        first = await chunks.__anext__()
        await resp.prepare(request)
        await resp.write(first)
        async for data in chunks:
            await resp.write(data)
    except EltonError as exc:
        if not resp.prepared:
            raise
        log.error("aborting %s mid-body: %s", what, exc.message)
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await resp.write_eof()
    return resp


def member_json(m: Any) -> dict[str, Any]:
    return {"id": m.id, "cluster": m.cluster, "role": m.role, "address": f"{m.gossip[0]}:{m.gossip[1]}",
            "http": m.http, "state": m.state.value, "incarnation": m.incarnation,
            "rtt_ms": None if m.rtt is None else round(m.rtt * 1000, 3),
            "rtt_estimate_ms": None if m.rtt_estimate is None else round(m.rtt_estimate * 1000, 3)}


class Api:
    def __init__(self, repo: Repository, status: Callable[[], dict[str, Any]], max_object_size: int,
                 http_token: str | None = None) -> None:
        self.repo = repo
        self.status_fn = status
        self.max_object_size = max_object_size
        self.http_token = http_token
        self.gossip: GossipService | None = None  # set once the mesh is up
        self.issuer: IssuerService | None = None
        self.pending: PendingCommits | None = None
        self.remote: MeshRemote | None = None
        self.holders: HolderService | None = None

    def app(self) -> web.Application:
        middlewares = [errors_middleware] + ([token_middleware(self.http_token)] if self.http_token else [])
        app = web.Application(middlewares=middlewares, client_max_size=MAX_JSON_BODY,
                              handler_args={"read_bufsize": 1 << 20})
        r = app.router
        r.add_get("/v1/health", self.health)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/keys", self.list_keys)
        r.add_get(r"/v1/keys/{key:.+}/versions/{version:(\d+|latest)}", self.get_manifest)
        r.add_get("/v1/keys/{key:.+}/versions", self.list_versions)
        r.add_post("/v1/keys/{key:.+}/versions", self.commit)
        for prefix in ("/v1/keys/", "/v1/data/"):
            r.add_get(prefix + "{key:.+}", self.get_key)  # and HEAD
            r.add_put(prefix + "{key:.+}", self.put_key)
        r.add_get("/v1/members", self.members)
        r.add_get("/v1/pending", self.list_pending)
        r.add_get("/v1/metrics", self.metrics)
        r.add_get("/v1/stats", self.stats)
        r.add_get("/v1/where/{key:.+}", self.where)
        r.add_get("/v1/mesh", self.mesh_info)
        r.add_post("/v1/mesh/token", self.mesh_token)
        r.add_post("/v1/mesh/remove", self.mesh_remove)
        r.add_post("/v1/chunks/missing", self.missing_chunks)
        r.add_post("/v1/chunks/stream", self.stream_chunks)
        r.add_get("/v1/chunks/{hash}", self.get_chunk)
        r.add_put("/v1/chunks/{hash}", self.put_chunk)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node_id": self.repo.identity.node_id})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status_fn())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    # -- mesh -------------------------------------------------------------------------------------
    def _mesh(self) -> GossipService:
        if self.gossip is None:
            raise Unavailable("the mesh layer is starting")
        return self.gossip

    async def members(self, request: web.Request) -> web.Response:
        gossip = self._mesh()
        return web.json_response({"self": gossip.id, "members": [member_json(m) for m in gossip.members()]})

    def _grants(self) -> int | None:
        co = self.holders.coalescer if self.holders is not None else None
        return co.granted if co is not None else None

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text: bytes by link class and cluster pair, cache hits and misses, holder faults."""
        if self.remote is None:
            raise Unavailable("the mesh layer is starting")
        return web.Response(text=render_prometheus(self.remote.metrics, self._grants()),
                            content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"})

    async def stats(self, request: web.Request) -> web.Response:
        if self.remote is None:
            raise Unavailable("the mesh layer is starting")
        return web.json_response(self.remote.metrics.snapshot(self._grants()))

    async def list_pending(self, request: web.Request) -> web.Response:
        if self.pending is None:
            raise Unavailable("the mesh layer is starting")
        return web.json_response({"pending": self.pending.list()})

    async def where(self, request: web.Request) -> web.Response:
        if self.issuer is None:
            raise Unavailable("the mesh layer is starting")
        key = request.match_info["key"]
        info = self.issuer.where(key)
        try:
            latest = await self.repo.find(key)
            info["latest_version"] = max(info.get("latest_version") or 0, latest.version)
            info["holders_of_latest"] = self._holders(latest)
        except EltonError:
            pass
        return web.json_response(info)

    def _holders(self, manifest: Manifest) -> list[str]:
        """Hosts known to hold every chunk of a version: this one, and those its cluster's index knows."""
        hashes = list({c.hash for c in manifest.chunks})
        found = []
        if len(self.repo.meta.has_chunks(hashes)) == len(hashes):
            found.append(self.repo.identity.node_id)
        index = self.holders.index if self.holders is not None else None
        if index is not None and hashes:
            now = self.holders.now()
            common = set.intersection(*(set(index.holders(h, now)) for h in hashes))
            found += sorted(common - set(found))
        return found

    async def mesh_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._mesh().info())

    async def mesh_token(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        ttl = body.get("ttl", 24 * 3600.0) if isinstance(body, dict) else None
        if not isinstance(ttl, (int, float)) or not 0 < ttl <= 365 * 24 * 3600:
            raise InvalidRequest("ttl must be a number of seconds between 0 and one year")
        return web.json_response({"token": self._mesh().make_token(float(ttl)), "ttl": ttl})

    async def mesh_remove(self, request: web.Request) -> web.Response:
        try:
            node = (await request.json())["node"]
            if not isinstance(node, str):
                raise TypeError("node must be a string")
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"remove body: {exc}") from exc
        return web.json_response({"removed": self._mesh().revoke(node)})

    # -- keys -------------------------------------------------------------------------------------
    async def put_key(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        parent = _int_param(request, "parent")
        length = request.content_length
        if length is not None and length > self.max_object_size:
            raise TooLarge(f"{length} bytes; this node takes at most {self.max_object_size}")

        async def body() -> AsyncIterator[bytes]:
            try:
                async for data in request.content.iter_any():
                    yield data
            except Exception as exc:  # the client went away or sent a broken body
                raise IncompleteUpload(f"{key}: {type(exc).__name__}") from exc
            if request.content.exception() is not None:
                raise IncompleteUpload(f"{key}: {request.content.exception()}")

        token = queue_commits.set(request.query.get("queue") in ("1", "true", "yes"))
        try:
            manifest = await self.repo.ingest(key, body(), expected_size=length, expected_parent=parent,
                                              max_size=self.max_object_size)
        finally:
            queue_commits.reset(token)
        log.info("put", extra={"key": key, "version": manifest.version, "size": manifest.size})
        return web.json_response(manifest_summary(manifest), status=201,
                                 headers={"Location": self._version_url(manifest)})

    def _version_url(self, m: Manifest) -> str:
        return f"/v1/keys/{quote(m.key, safe='/')}?version={m.version}"

    async def get_key(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        version = _int_param(request, "version", minimum=1)
        manifest = await self.repo.find(key, version)
        etag = f'"{manifest.content_hash}"'
        headers = {
            "ETag": etag,
            "X-Elton-Version": str(manifest.version),
            "X-Elton-Key": quote(manifest.key, safe="/"),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if version is None:
            headers["Cache-Control"] = "no-store"
            headers["Content-Location"] = self._version_url(manifest)
        else:
            headers["Cache-Control"] = IMMUTABLE
            if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
                return web.Response(status=304, headers=headers)
        start, end, status = 0, manifest.size, 200
        rng = request.headers.get("Range")
        if rng and manifest.size > 0:
            try:
                picked = parse_range(rng, manifest.size)
            except RangeNotSatisfiable as exc:
                return web.json_response(exc.to_json(), status=416,
                                         headers={"Content-Range": f"bytes */{manifest.size}"})
            if picked is not None:
                start, end = picked
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{manifest.size}"
        headers["Content-Length"] = str(end - start)
        resp = web.StreamResponse(status=status, headers=headers)
        if request.method == "HEAD" or end == start:
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        return await stream_body(request, resp, self.repo.read_range_anywhere(manifest, start, end),
                                 f"{key}@{manifest.version}")

    async def list_versions(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        limit = _int_param(request, "limit", 1000, minimum=1) or 1000
        before = _int_param(request, "before", minimum=1)
        items = await self.repo.history(key, min(limit, MAX_LIST), before)
        return web.json_response({"key": key, "versions": [manifest_summary(m) for m in items]})

    async def get_manifest(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        raw = request.match_info["version"]
        if raw == "latest":
            manifest = await self.repo.find(key)
            cache = "no-store"
        elif raw.isdigit() and int(raw) >= 1:
            manifest = await self.repo.find(key, int(raw))
            cache = IMMUTABLE
        else:
            raise InvalidRequest(f"version must be a positive integer or 'latest', not {raw!r}")
        return web.json_response(manifest.to_json(), headers={"Cache-Control": cache})

    async def list_keys(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        after = request.query.get("after", "")
        limit = min(_int_param(request, "limit", 1000, minimum=1) or 1000, MAX_LIST)
        rows = self.repo.meta.list_keys(prefix, limit, after)
        return web.json_response({
            "prefix": prefix,
            "keys": [{"key": k, "version": v, "size": s, "content_hash": h, "issued_at": t, "kind": kind}
                     for k, v, s, h, t, kind in rows],
        })

    async def commit(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        try:
            body = await request.json()
            refs = [_chunk_ref(c) for c in body.get("chunks", [])]
            raw_durable = body.get("durable") or []
            if not isinstance(raw_durable, list):
                raise ValueError("durable must be a list of [hash, size]")
            durable = [_chunk_ref(c) for c in raw_durable]
            if len(durable) > MAX_DURABLE_CHUNKS:
                raise ValueError(f"at most {MAX_DURABLE_CHUNKS} durable chunks")
            parent = body.get("parent")
            meta = body.get("meta") or {}
            if parent is not None and (not isinstance(parent, int) or parent < 0):
                raise ValueError("parent must be a non-negative integer")
            if not isinstance(meta, dict):
                raise ValueError("meta must be an object")
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise InvalidRequest(f"commit body: {exc}") from exc
        manifest = await self.repo.commit(key, refs, kind=str(body.get("kind", "file")), meta=meta,
                                          content_hash=body.get("content_hash"), expected_parent=parent,
                                          durable=durable)
        if "size" in body and body["size"] != manifest.size:
            raise InvalidRequest(f"size {body['size']} does not match the chunks ({manifest.size})")
        return web.json_response(manifest.to_json(), status=201,
                                 headers={"Location": self._version_url(manifest)})

    # -- chunks -----------------------------------------------------------------------------------
    async def put_chunk(self, request: web.Request) -> web.Response:
        h = request.match_info["hash"]
        if (request.content_length or 0) > MAX_CHUNK_UPLOAD:
            raise TooLarge(f"a chunk is at most {MAX_CHUNK_UPLOAD} bytes")
        parts: list[bytes] = []
        got = 0
        async for part in request.content.iter_any():
            got += len(part)
            if got > MAX_CHUNK_UPLOAD:
                raise TooLarge(f"a chunk is at most {MAX_CHUNK_UPLOAD} bytes")
            parts.append(part)
        data = b"".join(parts)
        if request.content_length is not None and len(data) != request.content_length:
            raise IncompleteUpload(f"chunk {h}: {len(data)} of {request.content_length} bytes")
        created = await self.repo.put_chunk(h, data)
        return web.json_response({"hash": h, "size": len(data), "created": created},
                                 status=201 if created else 200)

    async def get_chunk(self, request: web.Request) -> web.Response:
        """A chunk's verified bytes; one this host lacks is fetched from the mesh (and kept here).

        ``?size=N`` lets the fetch plan; without it the chunk is checked by its hash alone.
        ``?author=NODE``: a host likely to hold it (``_author_param``)."""
        h = check_hash(request.match_info["hash"])
        size = _int_param(request, "size", 0) or 0
        author = _author_param(request.query.get("author"))
        if self.repo.chunks.has(h) or self.repo.remote is None:
            with self.repo.cache.using([h]):  # a cached copy is not evicted while it is read
                self.repo.cache.touch(h)
                data = await self.repo.read_chunk(h)
        else:
            parts = [d async for d in self.repo.remote.fetch(None, [ChunkRef(h, size)], author)]
            data = parts[0]
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"ETag": f'"{h}"', "Cache-Control": IMMUTABLE})

    async def stream_chunks(self, request: web.Request) -> web.StreamResponse:
        """The bytes of a list of chunks, in order, one after the other: ``{"chunks": [[hash, size]...]}``,
        with an optional ``"author": NODE`` (``_author_param``).

        Chunks this host lacks come from the mesh in one fetch (eltonfs reads a whole lower file so).
        A chunk that cannot be had cuts the response short; the client checks every chunk's hash."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("not an object")
            raw = body["chunks"]
            author = _author_param(body.get("author"))
            refs = [ChunkRef(check_hash(str(h)), int(n)) for h, n in raw]
            if not refs or len(refs) > MAX_MISSING_QUERY or any(r.size <= 0 for r in refs):
                raise ValueError(f"1 to {MAX_MISSING_QUERY} chunks, each with its size")
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"chunk stream body: {exc}") from exc
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(sum(r.size for r in refs))})
        return await stream_body(request, resp, self.repo.stream_chunks(refs, author), "a chunk stream")

    async def missing_chunks(self, request: web.Request) -> web.Response:
        try:
            hashes = (await request.json())["hashes"]
            if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
                raise TypeError("hashes must be a list of strings")
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"missing-chunks body: {exc}") from exc
        if len(hashes) > MAX_MISSING_QUERY:
            raise TooLarge(f"at most {MAX_MISSING_QUERY} hashes per query")
        return web.json_response({"missing": self.repo.missing(hashes)})
