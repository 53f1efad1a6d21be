"""What this machine allows a cold in-cluster read, with no Elton code on the data path.

Two network namespaces joined by a veth pair, as the harness's hosts are. In one, a server sends a
file with sendfile (a holder at its cheapest). In the other, a relay receives it into reused
buffers, hashes every piece of --piece-kib with BLAKE3 (a reader checks every chunk), may keep a
copy (one preallocated file, written by a second thread while the bytes go on), and passes the
bytes to curl over loopback HTTP. That is each step of a cold read done once, with syscalls alone:
no per-chunk files, no event loop, no allocation per chunk.

Beside it, in the same run, the local figure: curl reading the file from a sendfile server on its
own host (what a GET on the writing host does at best). Medians of --rounds. Needs root.

  local      sendfile server -> curl, one host
  relay      holder -> veth -> recv, hash -> curl: the copy kept nowhere
  direct     the same, the copy written with O_DIRECT
  buffered   the same, the copy written through the page cache
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[2]
HOLDER_PORT, RELAY_PORT, LOCAL_PORT = 9611, 9612, 9613
BUFFERS = 16
STORES = ("none", "direct", "buffered")


def _listen(addr: str, port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(4)
    return s


def _sendfile_all(sock: socket.socket, path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            off += os.sendfile(sock.fileno(), fd, off, size - off)
    finally:
        os.close(fd)


def _http_head(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size


def serve_holder(path: str) -> None:
    """Role: send the file to every connection (the relay connects once per round)."""
    srv = _listen("0.0.0.0", HOLDER_PORT)
    while True:
        conn, _ = srv.accept()
        with conn:
            _sendfile_all(conn, path)


def serve_local(path: str) -> None:
    """Role: one HTTP response with sendfile, for curl on the same host."""
    srv = _listen("127.0.0.1", LOCAL_PORT)
    conn, _ = srv.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(_http_head(os.path.getsize(path)))
        _sendfile_all(conn, path)


def serve_relay(holder: str, size: int, piece: int, store: str, copy: str) -> None:
    """Role: one HTTP response whose bytes come from the holder, hashed and maybe kept on the way."""
    srv = _listen("127.0.0.1", RELAY_PORT)
    client, _ = srv.accept()
    client.recv(65536)
    client.sendall(_http_head(size))
    upstream = socket.create_connection((holder, HOLDER_PORT))
    free: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(mmap.mmap(-1, piece))  # page-aligned, reused: no fresh memory per piece
    out: queue.Queue[tuple[mmap.mmap, int, threading.Event] | None] = queue.Queue()
    writes: queue.Queue[tuple[mmap.mmap, int, int, threading.Event] | None] = queue.Queue()
    fd = -1
    if store != "none":
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if store == "direct" else 0), 0o644)
        os.posix_fallocate(fd, 0, size)

    def receive() -> None:
        got = 0
        while got < size:
            buf = free.get()
            view, n, want = memoryview(buf), 0, min(piece, size - got)
            while n < want:
                r = upstream.recv_into(view[n:want])
                if not r:
                    raise ConnectionError("holder closed early")
                n += r
            blake3.blake3(view[:n]).digest()
            written = threading.Event()
            if fd >= 0:
                writes.put((buf, n, got, written))
            else:
                written.set()
            out.put((buf, n, written))
            view.release()
            got += n
        out.put(None)
        writes.put(None)

    def write() -> None:
        while (item := writes.get()) is not None:
            buf, n, offset, written = item
            with memoryview(buf) as view:
                os.pwrite(fd, view[:n], offset)
            written.set()

    threads = [threading.Thread(target=receive, daemon=True), threading.Thread(target=write, daemon=True)]
    for t in threads:
        t.start()
    while (item := out.get()) is not None:
        buf, n, written = item
        with memoryview(buf) as view:
            client.sendall(view[:n])
        written.wait()  # the buffer is reused only once its copy is written
        free.put(buf)
    client.close()
    if fd >= 0:
        os.close(fd)


class Pair:
    """Two network namespaces joined by a veth pair (10.96.0.1 and .2)."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.a, self.b = f"eltceil-a{tag}", f"eltceil-b{tag}"

    def __enter__(self) -> Pair:
        run = lambda *argv: subprocess.run(argv, check=True)  # noqa: E731
        try:
            run("ip", "netns", "add", self.a)
            run("ip", "netns", "add", self.b)
            run("ip", "link", "add", "vceila", "netns", self.a, "type", "veth", "peer", "name", "vceilb", "netns", self.b)
            for ns, dev, ip in ((self.a, "vceila", "10.96.0.1/24"), (self.b, "vceilb", "10.96.0.2/24")):
                run("ip", "-n", ns, "addr", "add", ip, "dev", dev)
                run("ip", "-n", ns, "link", "set", dev, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()  # a half-built pair is not left behind
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "delete", ns], check=False)

    def popen(self, ns: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, *args])

    def curl(self, ns: str, port: int) -> float:
        for _ in range(50):  # the server is listening within a moment
            r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "-f", "-o", "/dev/null", "-w",
                                "%{speed_download}", f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
            if r.returncode != 7:  # 7: could not connect yet
                break
            time.sleep(0.1)
        if r.returncode != 0:
            raise SystemExit(f"curl on port {port}: {r.stderr.strip()}")
        return float(r.stdout)


def _digest(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def measure(size_mib: int = 1024, rounds: int = 3, piece_kib: int = 640, work: Path | None = None) -> dict[str, list[float]]:
    """Bytes per second of each way, ``rounds`` times, interleaved."""
    size, piece = size_mib << 20, piece_kib << 10
    if piece % 4096 or size % 4096:
        raise SystemExit("--piece-kib and the size must be whole 4 KiB blocks (O_DIRECT)")
    res: dict[str, list[float]] = {"local": [], **{s: [] for s in STORES}}
    with tempfile.TemporaryDirectory(prefix="elton-ceiling-", dir=work) as d, Pair() as pair:
        src, copy = Path(d) / "file", Path(d) / "copy"
        with open(src, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        want = _digest(src)
        holder = pair.popen(pair.a, "--role", "holder", str(src))
        try:
            for _ in range(rounds):
                local = pair.popen(pair.a, "--role", "local", str(src))
                res["local"].append(pair.curl(pair.a, LOCAL_PORT))
                local.wait(timeout=60)
                for store in STORES:
                    copy.unlink(missing_ok=True)
                    relay = pair.popen(pair.b, "--role", "relay", "10.96.0.1", str(size), str(piece), store, str(copy))
                    res[store].append(pair.curl(pair.b, RELAY_PORT))
                    if relay.wait(timeout=120) != 0:
                        raise SystemExit(f"relay ({store}) failed")
                    if store != "none" and _digest(copy) != want:
                        raise SystemExit(f"relay ({store}) kept a copy unlike the file")
                print({k: f"{v[-1] / 1e6:.0f} MB/s" for k, v in res.items()}, file=sys.stderr)
        finally:
            holder.kill()
            holder.wait()
    return res


def table(res: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in res.items()}
    rows = [("local: sendfile to curl on one host", "local"), ("relay, the copy kept nowhere", "none"),
            ("relay, the copy written with O_DIRECT", "direct"), ("relay, the copy written buffered", "buffered")]
    lines = ["| raw syscalls, no Elton (median) | MB/s | against local | rounds |", "|---|---|---|---|"]
    for label, k in rows:
        runs = ", ".join(f"{x / 1e6:.0f}" for x in res[k])
        lines.append(f"| {label} | {med[k] / 1e6:.0f} | {med[k] / med['local']:.0%} | {runs} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        role, *rest = sys.argv[2:]
        if role == "holder":
            serve_holder(rest[0])
        elif role == "local":
            serve_local(rest[0])
        else:
            serve_relay(rest[0], int(rest[1]), int(rest[2]), rest[3], rest[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=640, help="hashed and written as one piece (Elton's average chunk)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "ceiling.json")
    args = ap.parse_args()
    res = measure(args.size_mib, args.rounds, args.piece_kib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"all": res, "median_bytes_per_s": {k: statistics.median(v) for k, v in res.items()}},
                                   indent=2))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
