"""Commit benchmark on real eltond processes in network namespaces.

Each commit is a 100-byte PUT to the writer host's own eltond (HTTP on its loopback), so it pays
for the chunk copy (copies = 2 in the cluster) and the issuance at the key's home, replicated to a
majority of the key's replica set (replicas = 3, replica_scope = mesh). Keys are chosen by where
their home is: the writer's host, another master of its cluster, or a master across the WAN.

By default every commit writes the same 100 bytes, so its chunk is already stored on the writer
and on the copy host; ``--unique`` makes each commit's content new (a new chunk to fsync, record
and copy each time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.harness.netns import Harness  # noqa: E402
from tests.harness.test_mesh import converged  # noqa: E402

# Runs inside the writer's namespace: N writers PUT to the local eltond, each over its own keys and
# its own keep-alive connection. A minimal HTTP/1.1 client (like wrk's), so the load generator takes
# little of the cores the daemons share (aiohttp's client cost about 0.15 ms of CPU per request, as
# much as two replicas); the request is the same PUT `elton put` sends.
LOAD = r"""
import asyncio, json, sys, time
import uvloop
keys, writers, count = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
unique = len(sys.argv) > 4 and sys.argv[4] == "unique"
run = time.time_ns()
async def main():
    lat = []
    async def writer(w):
        reader, conn = await asyncio.open_connection("127.0.0.1", 7420)
        for i in range(count // writers):
            key = keys[(w + i * writers) % len(keys)]
            t = time.perf_counter()
            body = f"{run} {w} {i} ".encode().ljust(100, b"x") if unique else b"x" * 100
            conn.write(b"PUT /v1/keys/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                       % (key.encode(), len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            status, length = int(head[9:12]), 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            answer = await reader.readexactly(length)
            if status != 201:
                raise SystemExit(f"PUT {key}: {status} {answer.decode(errors='replace')}")
            lat.append(time.perf_counter() - t)
        conn.close()
    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    print(json.dumps({"lat": lat, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time()}))
uvloop.run(main())
"""


def daemon_cpu(h: Harness) -> dict[str, float]:
    """Seconds of CPU (user + system, all threads) each host's eltond has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for host in h.hosts:
        fields = Path(f"/proc/{host.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[host.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def where(h: Harness, host: str, key: str) -> str:
    r = h.exec(host, [str(h.venv / "bin" / "elton"), "where", "--json", key])
    return json.loads(r.stdout)["home"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1600, help="commits per measurement")
    ap.add_argument("--unique", action="store_true", help="new content in every commit (not the same 100 bytes)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each measurement; the table gives medians")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "commit.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="elton-commit-") as work, Harness(Path(work), clusters=3, hosts=2, masters_per_cluster=2,
                 health_timeout=60) as h:
        converged(h)
        ids = {json.loads(Path(x.data_dir, "eltond.json").read_text())["node_id"]: x for x in h.hosts}
        writer = h.host("c1h1")
        groups: dict[str, list[str]] = {"writer's host": [], "its cluster": [], "across the WAN": []}
        i = 0
        while min(len(v) for v in groups.values()) < 32 and i < 20000:
            key = f"bench/k{i}"
            i += 1
            home = ids[where(h, "c1h1", key)]
            group = ("writer's host" if home.name == writer.name else
                     "its cluster" if home.cluster == writer.cluster else "across the WAN")
            if len(groups[group]) < 32:
                groups[group].append(key)
        for name, keys in groups.items():
            h.exec("c1h1", [sys.executable, "-c", LOAD, json.dumps(keys), "16", str(len(keys))], timeout=300)
            for writers in (1, 16):
                count = args.count if writers == 16 else max(200, args.count // 8)
                runs = []
                for _ in range(args.rounds):
                    before = daemon_cpu(h)
                    r = h.exec("c1h1", [sys.executable, "-c", LOAD, json.dumps(keys), str(writers), str(count),
                                        "unique" if args.unique else "same"], timeout=600)
                    if r.returncode != 0:
                        raise SystemExit(f"load failed: {r.stdout} {r.stderr}")
                    used = {k: v - before[k] for k, v in daemon_cpu(h).items()}
                    res = json.loads(r.stdout)
                    lat = sorted(res["lat"])
                    runs.append({"commits": len(lat), "p50_ms": statistics.median(lat) * 1e3,
                                 "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3, "per_s": len(lat) / res["seconds"],
                                 "daemons_cpu_ms": sum(used.values()) / len(lat) * 1e3,
                                 "daemon_cpu_ms": {k: round(v / len(lat) * 1e3, 3) for k, v in used.items()},
                                 "load_cpu_ms": res["cpu_s"] / len(lat) * 1e3})
                    print(name, writers, runs[-1], file=sys.stderr)
                rows.append({"home": name, "writers": writers, "content": "unique" if args.unique else "same",
                             **{k: statistics.median(x[k] for x in runs) for k in ("p50_ms", "p99_ms", "per_s", "daemons_cpu_ms")},
                             "rounds": runs})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"\nmedians of {args.rounds} runs\n| key's home | writers | p50 | p99 | commits/s | CPU per commit, daemons |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['home']} | {r['writers']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['per_s']:.0f} | {r['daemons_cpu_ms']:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
