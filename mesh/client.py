"""The Python client of a node's HTTP API; the `elton` CLI and eltonfs are thin shells over it.

Synchronous (http.client) so it works the same from a CLI, a thread of the FUSE layer or a test.
One keep-alive connection per thread. Every download is verified: each chunk by its hash on
``get_chunk``, a whole version by its content hash at the end of ``get``.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import ipaddress
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

import blake3

from mesh.core.manifest import chunk_hash
from mesh.errors import CorruptChunk, DaemonUnreachable, InvalidRequest, from_json

DEFAULT_URL = "http://127.0.0.1:7420"
BLOCK = 1024 * 1024
SPLICE_PIPE = 1024 * 1024  # the pipe a splice'd chunk stream goes through (the unprivileged maximum)
IDLE_REUSE_SECONDS = 2.0  # a kept-alive connection idle longer is not trusted with a non-idempotent request
Progress = Callable[[int], None]


def default_url() -> str:
    return os.environ.get("ELTON_HOST") or DEFAULT_URL


def _k(key: str) -> str:
    return quote(key, safe="/")


class Download:
    """A streamed version: iterate for bytes; the content hash is checked when the stream ends."""

    def __init__(self, client: Client, resp: http.client.HTTPResponse, verify: bool) -> None:
        self._client = client
        self._resp = resp
        self.version = int(resp.getheader("X-Elton-Version", "0"))
        self.size = int(resp.getheader("Content-Length", "0"))
        self.content_hash = (resp.getheader("ETag") or "").strip('"')
        self._verify = verify and resp.status == 200

    def __iter__(self) -> Iterator[bytes]:
        hasher = blake3.blake3() if self._verify else None
        got = 0
        try:
            while True:
                data = self._resp.read1(BLOCK) if hasattr(self._resp, "read1") else self._resp.read(BLOCK)
                if not data:
                    break
                got += len(data)
                if hasher is not None:
                    hasher.update(data)
                yield data
        except (http.client.IncompleteRead, OSError) as exc:
            self._client._drop_connection()
            raise CorruptChunk(f"download broke off after {got} of {self.size} bytes ({exc})") from exc
        # read1() never closes a response it emptied; a response left open makes the next request on
        # this keep-alive connection fail after it was sent
        self._resp.close()
        if got != self.size:
            self._client._drop_connection()
            raise CorruptChunk(f"download broke off after {got} of {self.size} bytes")
        if hasher is not None and hasher.hexdigest() != self.content_hash:
            raise CorruptChunk(f"content hashes to {hasher.hexdigest()}, not {self.content_hash}")

    def close(self) -> None:
        if not self._resp.isclosed():
            self._client._drop_connection()


class Client:
    def __init__(self, base_url: str | None = None, timeout: float = 60.0, token: str | None = None) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        self.token = token if token is not None else os.environ.get("ELTON_HTTP_TOKEN")
        parts = urlsplit(self.base_url if "://" in self.base_url else "http://" + self.base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidRequest(f"host must be an http:// URL, not {self.base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self.timeout = timeout
        # The node id of a host likely to hold the chunks read next (eltonfs: the author of the tree
        # version it reads); sent with chunk reads, the daemon tries it for chunks no master knows
        # a holder of yet (right after a commit elsewhere, the holder reports may be on their way).
        self.author_hint: str | None = None
        self._local = threading.local()

    @property
    def is_local(self) -> bool:
        """True when the daemon listens on a loopback address: it is on this host, and what it streams
        arrives as it sent it (it has checked each chunk's hash before)."""
        try:
            return ipaddress.ip_address(self._host).is_loopback
        except ValueError:
            return self._host == "localhost"

    # -- plumbing ---------------------------------------------------------------------------------
    def _conn(self, fresh_if_idle: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and fresh_if_idle and time.monotonic() - self._local.used_at > IDLE_REUSE_SECONDS:
            self._drop_connection()  # the server may be closing it: a request that must not be retried
            conn = None              # goes out on a connection known to be open
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout, blocksize=BLOCK)
            self._local.conn = conn
        self._local.used_at = time.monotonic()
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        self._drop_connection()

    def open(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             *, retry: bool | None = None) -> http.client.HTTPResponse:
        """Send a request and return the response with its body unread (for streaming).

        A request that fails on a kept-alive connection is sent again once only when it is
        idempotent (reads, content-addressed chunks): the first one may have been carried out, and a
        second commit would issue a second version."""
        if retry is None:
            retry = method in ("GET", "HEAD") or path.startswith("/v1/chunks/")
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            conn = self._conn(fresh_if_idle=not retry)
            try:
                conn.request(method, path, body=body, headers=headers,
                             encode_chunked=headers.get("Transfer-Encoding") == "chunked")
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    http.client.ResponseNotReady, BrokenPipeError) as exc:
                self._drop_connection()
                # a kept-alive connection may have been closed by the server: retry once if replayable
                if attempt == 0 and retry and (body is None or isinstance(body, bytes)):
                    continue
                raise DaemonUnreachable(f"{self.base_url}: {exc}") from exc
            except OSError as exc:
                self._drop_connection()
                raise DaemonUnreachable(f"{self.base_url}: {exc.strerror or exc}") from exc
        if resp.status >= 400:
            raw = resp.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"message": f"HTTP {resp.status}: {raw[:200].decode(errors='replace')}"}
            if resp.getheader("Connection", "").lower() == "close":
                self._drop_connection()
            raise from_json(payload if isinstance(payload, dict) else {}, resp.status)
        return resp

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             *, retry: bool | None = None) -> bytes:
        """Send a request and return the whole response body."""
        return self.open(method, path, body, headers, retry=retry).read()

    def _json(self, method: str, path: str, payload: Any = None, *, body: Any = None,
              headers: dict[str, str] | None = None, retry: bool | None = None) -> Any:
        if payload is not None:
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"}
        raw = self.call(method, path, body, headers, retry=retry)
        return json.loads(raw) if raw else None

    # -- node -------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/v1/health")

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/v1/status")

    # -- mesh -------------------------------------------------------------------------------------
    def members(self) -> dict[str, Any]:
        """{"self": id, "members": [{id, cluster, role, address, http, state, incarnation, rtt_ms, rtt_estimate_ms}]}"""
        return self._json("GET", "/v1/members")

    def where(self, key: str) -> dict[str, Any]:
        """The key's home, replicas, latest version and the holders of the latest version."""
        return self._json("GET", f"/v1/where/{_k(key)}")

    def stats(self) -> dict[str, Any]:
        """Fetch counters: bytes by link class and cluster pair, cache hits and misses, recent choices."""
        return self._json("GET", "/v1/stats")

    def pending(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/pending")["pending"]

    def mesh_token(self, ttl: float = 24 * 3600.0) -> str:
        return self._json("POST", "/v1/mesh/token", {"ttl": ttl})["token"]

    def mesh_remove(self, node: str) -> str:
        return self._json("POST", "/v1/mesh/remove", {"node": node})["removed"]

    # -- keys -------------------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO | str | Path | bytes, *, parent: int | None = None,
            progress: Progress | None = None, queue: bool = False) -> dict[str, Any]:
        """Store ``source`` as the next version of ``key``; returns the version summary.

        With ``queue``, a commit whose home is unreachable is kept as a pending commit on this host
        and the result is ``{"error": "commit_queued", "pending": ID, "message": ...}``."""
        params = {k: v for k, v in (("parent", parent), ("queue", 1 if queue else None)) if v is not None}
        query = f"?{urlencode(params)}" if params else ""
        path = f"/v1/data/{_k(key)}{query}"
        if isinstance(source, bytes):
            if progress:
                progress(len(source))
            return self._json("PUT", path, body=source)
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return self.put(key, f, parent=parent, progress=progress, queue=queue)
        headers: dict[str, str] = {"Content-Type": "application/octet-stream"}
        try:
            size: int | None = os.fstat(source.fileno()).st_size
            if not Path(f"/proc/self/fd/{source.fileno()}").resolve().is_file():
                size = None
        except (OSError, AttributeError, ValueError):
            size = None
        if size is not None:
            headers["Content-Length"] = str(size - source.tell())
        else:
            headers["Transfer-Encoding"] = "chunked"
        body = _reader(source, progress)
        return self._json("PUT", path, body=body, headers=headers)

    def get(self, key: str, version: int | None = None, *, byte_range: tuple[int, int] | None = None) -> Download:
        """Stream a version (latest when ``version`` is None); iterate the result for bytes."""
        query = f"?version={version}" if version is not None else ""
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range else {}
        resp = self.open("GET", f"/v1/data/{_k(key)}{query}", headers=headers)
        return Download(self, resp, verify=byte_range is None)

    def read(self, key: str, version: int | None = None) -> bytes:
        return b"".join(self.get(key, version))

    def download(self, key: str, version: int | None, dest: BinaryIO, progress: Progress | None = None) -> int:
        d = self.get(key, version)
        for data in d:
            dest.write(data)
            if progress:
                progress(len(data))
        return d.version

    def manifest(self, key: str, version: int | None = None) -> dict[str, Any]:
        return self._json("GET", f"/v1/keys/{_k(key)}/versions/{version if version is not None else 'latest'}")

    def versions(self, key: str, limit: int = 1000) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/keys/{_k(key)}/versions?limit={limit}")["versions"]

    def list(self, prefix: str = "", limit: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = ""
        while limit is None or len(out) < limit:
            page = self._json("GET", "/v1/keys?" + urlencode({"prefix": prefix, "after": after, "limit": 1000}))
            out.extend(page["keys"])
            if len(page["keys"]) < 1000:
                break
            after = page["keys"][-1]["key"]
        return out if limit is None else out[:limit]

    def commit(self, key: str, *, chunks: Iterable[tuple[str, int]], size: int | None = None,
               content_hash: str | None = None, kind: str = "file", meta: dict[str, Any] | None = None,
               parent: int | None = None, durable: Iterable[tuple[str, int]] = ()) -> dict[str, Any]:
        """Issue a version from chunks stored on the node. ``durable``: more chunks (stored there) the
        version needs but does not list, e.g. an eltonfs tree's new files and directories; the node
        places them on ``copies`` holders with the listed ones before it issues the version."""
        payload: dict[str, Any] = {"chunks": [[h, s] for h, s in chunks], "kind": kind, "meta": meta or {}}
        extra = [[h, s] for h, s in durable]
        if extra:
            payload["durable"] = extra
        if size is not None:
            payload["size"] = size
        if content_hash is not None:
            payload["content_hash"] = content_hash
        if parent is not None:
            payload["parent"] = parent
        return self._json("POST", f"/v1/keys/{_k(key)}/versions", payload)

    # -- chunks -----------------------------------------------------------------------------------
    def put_chunk(self, data: bytes) -> str:
        h = chunk_hash(data)
        self.call("PUT", f"/v1/chunks/{h}", data, {"Content-Type": "application/octet-stream"})
        return h

    def get_chunk(self, h: str, size: int | None = None) -> bytes:
        """A chunk by hash (the node fetches it from the mesh if it lacks it; ``size`` helps it plan)."""
        params = {k: v for k, v in (("size", size), ("author", self.author_hint)) if v}
        data = self.call("GET", f"/v1/chunks/{h}" + (f"?{urlencode(params)}" if params else ""))
        if chunk_hash(data) != h:
            raise CorruptChunk(f"chunk {h} arrived with other content")
        return data

    def stream_chunks(self, chunks: list[tuple[str, int]]) -> Iterator[bytes]:
        """The chunks' bytes in order, each verified against its hash (one request, one mesh fetch)."""
        buffer = bytearray(max((n for _, n in chunks), default=0))
        with contextlib.closing(self.stream_chunks_into(chunks, [buffer])) as views:  # a reader leaving early ends it
            for view in views:
                yield bytes(view)

    def _chunk_stream(self, chunks: list[tuple[str, int]]) -> http.client.HTTPResponse:
        request: dict[str, object] = {"chunks": [[h, n] for h, n in chunks]}
        if self.author_hint:
            request["author"] = self.author_hint
        body = json.dumps(request).encode()
        return self.open("POST", "/v1/chunks/stream", body, {"Content-Type": "application/json"}, retry=True)

    def stream_chunks_into(self, chunks: list[tuple[str, int]], buffers: list[bytearray],
                           verify: bool = True) -> Iterator[memoryview]:
        """``stream_chunks`` without a new bytes object per chunk: chunk i is read into
        ``buffers[i % len(buffers)]`` (each as large as the largest chunk) and verified there; its view
        stays valid until ``len(buffers)`` more chunks were asked for. Large fetches then touch no new
        memory, which on a busy VM costs more than the network. ``verify=False`` skips the hash check
        (the daemon checks every chunk it streams; a caller on its host may rely on that: see
        ``is_local``); a short chunk is still an error."""
        resp = self._chunk_stream(chunks)
        try:
            for i, (h, n) in enumerate(chunks):
                view = memoryview(buffers[i % len(buffers)])[:n]
                got = 0
                while got < n and (r := resp.readinto(view[got:])):
                    got += r
                if got != n or (verify and chunk_hash(view) != h):
                    self._drop_connection()
                    raise CorruptChunk(f"chunk {h} arrived short or with other content")
                yield view
        finally:
            if resp.length:  # left before the end: the rest of the body would poison the connection
                self._drop_connection()
            resp.close()

    def stream_chunks_to_fd(self, chunks: list[tuple[str, int]], fd: int, progress: Progress) -> None:
        """Write the chunks' bytes in order to ``fd`` from offset 0 by splice(2), socket to pipe to file
        inside the kernel: no copy through Python, no second thread. Not hashed here: for a daemon on
        this host (``is_local``), which checks every chunk it streams; a short stream is an error.
        ``progress(n)`` follows every ``n`` bytes written, so a reader may use the prefix at once."""
        total = sum(n for _, n in chunks)
        resp = self._chunk_stream(chunks)
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        ok = False
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, SPLICE_PIPE)
            room = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
            head = resp.fp.peek(1)[:total] if total else b""  # what the response's buffer read already
            pos = os.pwrite(fd, resp.fp.read(len(head)), 0) if head else 0
            if pos:
                progress(pos)
            sock = self._local.conn.sock
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            while pos < total:
                try:
                    k = os.splice(sock.fileno(), w, min(room, total - pos), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    if not poller.poll(self.timeout * 1000):
                        raise DaemonUnreachable(f"{self.base_url}: no data for {self.timeout:.0f} s") from None
                    continue
                if k == 0:
                    raise CorruptChunk(f"chunk stream ended after {pos} of {total} bytes")
                while k:
                    n = os.splice(r, fd, k, offset_dst=pos, flags=os.SPLICE_F_MOVE)
                    pos, k = pos + n, k - n
                    progress(n)
            ok = True
        finally:
            os.close(r)
            os.close(w)
            if ok:
                resp.length = 0  # every byte was taken from the socket: the connection may be reused
            else:
                self._drop_connection()
            resp.close()

    def missing_chunks(self, hashes: list[str]) -> list[str]:
        return self._json("POST", "/v1/chunks/missing", {"hashes": hashes})["missing"]


def _reader(f: BinaryIO, progress: Progress | None) -> Iterator[bytes]:
    while True:
        data = f.read(BLOCK)
        if not data:
            return
        if progress:
            progress(len(data))
        yield data

