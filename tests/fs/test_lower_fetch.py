"""A lower file is served while it arrives: reads wait only for their own bytes, readers share one
fetch, other requests go on meanwhile, a cut fetch fails only the reads past what arrived and is
never taken for a whole file. The mount reads through a proxy in front of a real eltond that can
hold back or cut the chunk stream."""

from __future__ import annotations

import errno
import http.client
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.eltond_process import EltondProcess
from tests.fs.conftest import Host
from tests.fs.test_robust import info

HOLD_AFTER = 3 << 20  # the proxy sends this much of a chunk stream, then waits for the gate
SIZE = 12 << 20


class GatedProxy:
    """Forwards every request to eltond; a chunk stream's body stops after ``hold_after`` bytes until
    ``gate`` is set, or, with ``cut``, the connection is closed there."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.gate = threading.Event()
        self.hold_after = HOLD_AFTER
        self.cut = False
        self.streams = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                stream = self.path.startswith("/v1/chunks/stream")
                data = b"" if stream else resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(resp.length if stream else len(data)))
                self.end_headers()
                if not stream:
                    self.wfile.write(data)
                    conn.close()
                    return
                proxy.streams += 1
                sent = 0
                while piece := resp.read(64 * 1024):
                    if sent < proxy.hold_after <= sent + len(piece):
                        self.wfile.write(piece[:proxy.hold_after - sent])
                        self.wfile.flush()
                        if proxy.cut:
                            self.close_connection = True
                            conn.close()
                            return
                        proxy.gate.wait(60)
                        piece = piece[proxy.hold_after - sent:]
                        sent = proxy.hold_after
                    self.wfile.write(piece)
                    sent += len(piece)
                conn.close()

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(node: EltondProcess) -> Iterator[GatedProxy]:
    p = GatedProxy(node.url)
    yield p
    p.close()


def committed_file(host_a: Host, volume: str) -> bytes:
    mnt = host_a.mount(volume)
    content = os.urandom(SIZE)
    (mnt / "big.bin").write_bytes(content)
    host_a.eltonfs("commit", str(mnt))
    host_a.umount(mnt)
    return content


def cached_names(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "files").rglob("*") if p.is_file())


def test_a_lower_file_is_read_while_it_arrives_by_one_shared_fetch(
        tmp_path: Path, node: EltondProcess, proxy: GatedProxy, host_a: Host, volume: str) -> None:
    content = committed_file(host_a, volume)
    b = Host(tmp_path / "b", proxy.url, tmp_path / "run")
    try:
        mnt = b.mount(volume)
        with ThreadPoolExecutor(4) as pool:
            with open(mnt / "big.bin", "rb", buffering=0) as f:
                # the head is served although most of the file is held back
                assert pool.submit(os.pread, f.fileno(), 4096, 0).result(timeout=30) == content[:4096]
                names = cached_names(b.cache)
                assert names and all(n.endswith(".tmp") for n in names), "no whole file is named before it is whole"
                whole = [pool.submit(lambda: (mnt / "big.bin").read_bytes()) for _ in range(2)]
                time.sleep(0.5)
                assert not any(w.done() for w in whole), "reads past the held-back bytes wait"
                assert "big.bin" in os.listdir(mnt)  # other requests go on meanwhile
                proxy.gate.set()
                assert all(w.result(timeout=60) == content for w in whole)
                assert f.read() == content
        assert proxy.streams == 1, "concurrent readers share one fetch"
        deadline = time.monotonic() + 30
        while not (names := cached_names(b.cache)) or any(n.endswith(".tmp") for n in names):
            assert time.monotonic() < deadline, f"the fetched file never got its name: {names}"
            time.sleep(0.05)
        assert (mnt / "big.bin").read_bytes() == content  # now from the cache: no new fetch
        assert proxy.streams == 1
        with open(mnt / "big.bin", "rb", buffering=0) as f:  # odd spans, past the end, from the kernel's cache
            for off, n in ((1, 100_000), (SIZE - 5000, 9000), (SIZE, 10), (4095, 1 << 20)):
                assert os.pread(f.fileno(), n, off) == content[off:off + n]
        if os.geteuid() == 0:  # the session engine: lower-file reads went to the kernel by splice
            assert info(b, mnt)["fuse"]["spliced_reads"] > 0
        b.umount(mnt)
    finally:
        b.cleanup()


def test_a_cut_fetch_fails_only_reads_past_it_and_is_not_cached(
        tmp_path: Path, node: EltondProcess, proxy: GatedProxy, host_a: Host, volume: str) -> None:
    content = committed_file(host_a, volume)
    proxy.cut = True
    b = Host(tmp_path / "b", proxy.url, tmp_path / "run")
    try:
        mnt = b.mount(volume)
        with open(mnt / "big.bin", "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 4096, 0) == content[:4096]
            with pytest.raises(OSError) as exc:
                os.pread(f.fileno(), 4096, SIZE - 4096)
            assert exc.value.errno == errno.EIO
        assert cached_names(b.cache) == [], "a partial file is neither named nor left behind"
        proxy.cut = False
        proxy.gate.set()
        assert (mnt / "big.bin").read_bytes() == content  # a new open fetches again
        assert proxy.streams == 2
        assert len(cached_names(b.cache)) == 1
        b.umount(mnt)
    finally:
        b.cleanup()
