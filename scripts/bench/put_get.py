"""Benchmark: eltond next to nginx on loopback, the same client (curl) for both, medians of rounds.

Each round, in alternation: a fresh eltond data dir takes a PUT of the file (so every chunk is
written and fsynced, no dedupe), nginx takes a WebDAV PUT of the same file, then both serve it
to curl (warm page cache for both). Small objects: sequential 4 KiB PUTs over one keep-alive
connection (latency), then 16 concurrent writers (PUTs per second), for both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.eltond_process import EltondProcess  # noqa: E402
from tests.nginx import NginxProcess  # noqa: E402

STATIC_AND_DAV = """
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
"""


def curl(*args: str) -> dict[str, float]:
    out = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-w",
                          "%{time_total} %{speed_download} %{speed_upload} %{http_code}", *args],
                         check=True, capture_output=True, text=True).stdout.split()
    return {"seconds": float(out[0]), "down": float(out[1]), "up": float(out[2]), "status": float(out[3])}


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def small_sequential(url: str, path_fmt: str, count: int, body: bytes) -> list[float]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    lat = []
    for i in range(count):
        t = time.perf_counter()
        conn.request("PUT", path_fmt.format(i=i), body=body)
        resp = conn.getresponse()
        resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"PUT failed: {resp.status}")
        lat.append(time.perf_counter() - t)
    conn.close()
    return lat


async def small_concurrent(url: str, path_fmt: str, count: int, body: bytes, writers: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=writers)) as session:
        todo = iter(range(count))

        async def writer() -> None:
            for i in todo:
                async with session.put(url + path_fmt.format(i=i), data=body) as resp:
                    await resp.read()
                    if resp.status >= 300:
                        raise RuntimeError(f"PUT failed: {resp.status}")

        t = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return count / (time.perf_counter() - t)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small-count", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None, help="on the disk to measure [default: /var/tmp]")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "put_get.json")
    args = ap.parse_args()
    if not shutil.which("nginx") or not shutil.which("curl"):
        print("put_get: needs nginx and curl (scripts/setup installs them)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="elton-bench-", dir=args.workdir or "/var/tmp"))
    (work / "nginx-root").mkdir()
    nginx = NginxProcess(work / "nginx", STATIC_AND_DAV, root=work / "nginx-root")
    results: dict[str, list[float]] = {k: [] for k in ("elton_put", "elton_get", "nginx_put", "nginx_get")}
    peak_rss = 0
    try:
        src = work / "big.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        size = src.stat().st_size
        print(f"file: {size / 2**20:.0f} MiB; rounds: {args.rounds}; workdir: {work}", file=sys.stderr)
        for r in range(args.rounds):
            data_dir = work / f"eltond-{r}"
            d = EltondProcess(data_dir).start()
            try:
                put = curl("-T", str(src), f"{d.url}/v1/keys/bench/big")
                results["elton_put"].append(size / put["seconds"])
                get = curl(f"{d.url}/v1/keys/bench/big?version=1")
                results["elton_get"].append(get["down"])
                peak_rss = max(peak_rss, rss_peak_kib(d.pid))
            finally:
                d.stop()
                shutil.rmtree(data_dir, ignore_errors=True)
            put = curl("-T", str(src), f"{nginx.url}/big-{r}.bin")
            results["nginx_put"].append(size / put["seconds"])
            get = curl(f"{nginx.url}/big-{r}.bin")
            results["nginx_get"].append(get["down"])
            (work / "nginx-root" / f"big-{r}.bin").unlink()
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] / 1e6:.0f} MB/s" for k, v in results.items()),
                  file=sys.stderr)

        body = os.urandom(4096)
        d = EltondProcess(work / "eltond-small").start()
        try:
            small_sequential(d.url, "/v1/keys/warm/{i}", 200, body)
            e_lat = small_sequential(d.url, "/v1/keys/small/{i}", args.small_count, body)
            e_rate = asyncio.run(small_concurrent(d.url, "/v1/keys/conc/{i}", args.small_count, body, 16))
            peak_rss = max(peak_rss, rss_peak_kib(d.pid))
        finally:
            d.stop()
        small_sequential(nginx.url, "/warm/{i}", 200, body)
        n_lat = small_sequential(nginx.url, "/small/{i}", args.small_count, body)
        n_rate = asyncio.run(small_concurrent(nginx.url, "/conc/{i}", args.small_count, body, 16))
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "size_bytes": size, "rounds": args.rounds,
        "median_bytes_per_s": med,
        "get_ratio_vs_nginx": med["elton_get"] / med["nginx_get"],
        "put_ratio_vs_nginx": med["elton_put"] / med["nginx_put"],
        "small_put": {
            "elton": {"p50_ms": pct(e_lat, 50) * 1e3, "p99_ms": pct(e_lat, 99) * 1e3,
                      "sequential_per_s": len(e_lat) / sum(e_lat), "concurrent16_per_s": e_rate},
            "nginx": {"p50_ms": pct(n_lat, 50) * 1e3, "p99_ms": pct(n_lat, 99) * 1e3,
                      "sequential_per_s": len(n_lat) / sum(n_lat), "concurrent16_per_s": n_rate},
        },
        "eltond_peak_rss_mib": peak_rss / 1024,
        "all_rounds_bytes_per_s": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    mb = 1e6
    s = report["small_put"]
    print(f"""
| {size / 2**20:.0f} MiB, median of {args.rounds} | eltond | nginx | eltond / nginx |
|---|---|---|---|
| PUT | {med['elton_put'] / mb:.0f} MB/s | {med['nginx_put'] / mb:.0f} MB/s | {report['put_ratio_vs_nginx']:.0%} |
| GET | {med['elton_get'] / mb:.0f} MB/s | {med['nginx_get'] / mb:.0f} MB/s | {report['get_ratio_vs_nginx']:.0%} |

| 4 KiB PUT ({args.small_count}) | eltond | nginx |
|---|---|---|
| p50 latency | {s['elton']['p50_ms']:.2f} ms | {s['nginx']['p50_ms']:.2f} ms |
| p99 latency | {s['elton']['p99_ms']:.2f} ms | {s['nginx']['p99_ms']:.2f} ms |
| PUTs/s, 1 writer | {s['elton']['sequential_per_s']:.0f} | {s['nginx']['sequential_per_s']:.0f} |
| PUTs/s, 16 writers | {s['elton']['concurrent16_per_s']:.0f} | {s['nginx']['concurrent16_per_s']:.0f} |

eltond peak RSS: {report['eltond_peak_rss_mib']:.0f} MiB (nginx does not fsync; eltond fsyncs every chunk and commit)
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
