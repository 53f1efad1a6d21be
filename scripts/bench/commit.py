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
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.harness.netns import Harness  # noqa: E402
from tests.harness.test_mesh import converged  # noqa: E402

# Runs inside the writer's namespace: N writers PUT to the local eltond, each over its own keys.
LOAD = r"""
import asyncio, json, sys, time
import aiohttp
keys, writers, count = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
unique = len(sys.argv) > 4 and sys.argv[4] == "unique"
run = time.time_ns()
async def main():
    lat = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=writers)) as s:
        async def writer(w):
            for i in range(count // writers):
                key = keys[(w + i * writers) % len(keys)]
                t = time.perf_counter()
                body = f"{run} {w} {i} ".encode().ljust(100, b"x") if unique else b"x" * 100
                async with s.put(f"http://127.0.0.1:7420/v1/keys/{key}", data=body) as r:
                    await r.read()
                    if r.status != 201:
                        raise SystemExit(f"PUT {key}: {r.status} {await r.text()}")
                lat.append(time.perf_counter() - t)
        for w in range(writers):  # warm: each key once (the first commit of a key elects its home)
            pass
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        print(json.dumps({"lat": lat, "seconds": time.perf_counter() - t0}))
asyncio.run(main())
"""


def where(h: Harness, host: str, key: str) -> str:
    r = h.exec(host, [str(h.venv / "bin" / "elton"), "where", "--json", key])
    return json.loads(r.stdout)["home"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1600, help="commits per measurement")
    ap.add_argument("--unique", action="store_true", help="new content in every commit (not the same 100 bytes)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "commit.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="elton-commit-") as work, Harness(Path(work), clusters=3, hosts=2, masters_per_cluster=2,
                 health_timeout=60) as h:
        converged(h)
        ids = {json.loads(Path(x.data_dir, "eltond.json").read_text())["node_id"]: x for x in h.hosts}
        writer = h.host("c1h1")
        me = next(i for i, x in ids.items() if x.name == "c1h1")
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
                r = h.exec("c1h1", [sys.executable, "-c", LOAD, json.dumps(keys), str(writers), str(count),
                                    "unique" if args.unique else "same"], timeout=600)
                if r.returncode != 0:
                    raise SystemExit(f"load failed: {r.stdout} {r.stderr}")
                res = json.loads(r.stdout)
                lat = sorted(res["lat"])
                rows.append({"home": name, "writers": writers, "content": "unique" if args.unique else "same", "commits": len(lat),
                             "p50_ms": statistics.median(lat) * 1e3, "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3,
                             "per_s": len(lat) / res["seconds"]})
                print(rows[-1], file=sys.stderr)
        del me
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("\n| key's home | writers | p50 | p99 | commits/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['home']} | {r['writers']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
