"""Fetch benchmark on real eltond processes in network namespaces (2 clusters x 3 hosts).

A file of --size-mib is written on c1h2. Then, each a fresh version so nothing is cached:
  local    GET on the writing host (the single-host figure the others are compared with)
  cluster  cold GET on c1h3 or c1h1, whichever holds no copy (chunks fetched inside the cluster)
  wan      cold GET on c2h2 (chunks cross the WAN link, shaped to --wan-rate by tbf)
  again    a second GET on the cluster's cold reader (its copies, from a neighbour, are on disk)
  warm     a second GET on c2h2 (from its cache)
Medians of --rounds; reads go to /dev/null through curl inside the reading host.
Then, unless --no-ceiling, the same cold in-cluster read done with raw syscalls and no Elton code
(scripts/bench/ceiling): what this machine allows, beside what eltond does, in one run.
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
from tests.harness.cold import chunk_hashes, cold_reader, eltonfs_cold_read  # noqa: E402
from tests.harness.netns import Harness, rate_to_bits  # noqa: E402
from tests.harness.test_mesh import converged  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ceiling  # noqa: E402


def get(h: Harness, host: str, key: str, version: int) -> float:
    r = h.exec(host, ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{speed_download}",
                      f"http://127.0.0.1:7420/v1/keys/{key}?version={version}"], timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"GET on {host} failed: {r.stderr}")
    return float(r.stdout)


def wan_in(h: Harness) -> int:
    return int(h.wan_bytes()["c2"]["rx_bytes"])


def thesis_bytes(h: Harness, writer: Path) -> dict[str, int]:
    """The thesis experiment, Elton against one central server, as bytes into the reading cluster."""
    (writer / "thesis.bin").write_bytes(os.urandom(64 << 20))
    out = h.exec("c1h2", [str(h.venv / "bin" / "elton"), "put", "bench/thesis", str(writer / "thesis.bin")], timeout=600)
    version = int(out.stdout.strip().rsplit("@", 1)[1])
    readers = ["c2h1", "c2h2", "c2h3"]
    before = wan_in(h)
    for _ in range(3):
        for r in readers:
            get(h, r, "bench/thesis", version)
    elton = wan_in(h) - before
    server = h.popen("c1h2", [sys.executable, "-m", "http.server", "8080", "--bind", h.address("c1h2"),
                              "--directory", str(writer)])
    try:
        import time

        time.sleep(1.0)
        before = wan_in(h)
        for _ in range(3):
            for r in readers:
                got = h.exec(r, ["curl", "-sS", "-f", "-o", "/dev/null", f"http://{h.address('c1h2')}:8080/thesis.bin"],
                             timeout=600)
                if got.returncode != 0:
                    raise SystemExit(f"central read failed: {got.stderr}")
        central = wan_in(h) - before
    finally:
        server.terminate()
    return {"elton": elton, "central": central}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--wan-size-mib", type=int, default=256, help="smaller: the WAN link is slow")
    ap.add_argument("--wan-rate", default="200mbit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "fetch.json")
    ap.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                    help="also run scripts/bench/ceiling's raw read path (default: yes)")
    args = ap.parse_args()
    res: dict[str, list[float]] = {"local": [], "cluster": [], "again": [], "wan": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="elton-fetch-") as work, Harness(Path(work), clusters=2, hosts=3,
                 wan_rate=args.wan_rate, health_timeout=60) as h:
        converged(h)
        writer = Path(h.host("c1h2").data_dir)
        for _ in range(args.rounds):
            for name, size in (("big", args.size_mib), ("wan", args.wan_size_mib)):
                (writer / f"{name}.bin").write_bytes(os.urandom(size << 20))
            put = lambda key, f: int(h.exec("c1h2", [str(h.venv / "bin" / "elton"), "put", key, str(writer / f)],  # noqa: E731
                                            timeout=900).stdout.strip().rsplit("@", 1)[1])
            v = put("bench/big", "big.bin")
            w = put("bench/wan", "wan.bin")
            res["local"].append(get(h, "c1h2", "bench/big", v))
            cold = cold_reader(h, chunk_hashes(writer / "big.bin"), ("c1h3", "c1h1"))  # not the copy's host
            res["cluster"].append(get(h, cold, "bench/big", v))
            res["again"].append(get(h, cold, "bench/big", v))
            res["wan"].append(get(h, "c2h2", "bench/wan", w))
            res["warm"].append(get(h, "c2h2", "bench/wan", w))
            print({k: f"{x[-1] / 1e6:.0f} MB/s" for k, x in res.items()}, file=sys.stderr)
        thesis = thesis_bytes(h, writer)
        efs = eltonfs_cold_read(h, "bench/vol", Path(tempfile.mkdtemp(prefix="elton-fetch-efs-", dir=h.dir)),
                                args.wan_size_mib, "efs")
    raw = ceiling.measure(args.size_mib, args.rounds) if args.ceiling else None
    med = {k: statistics.median(x) for k, x in res.items()}
    link = rate_to_bits(args.wan_rate) / 8
    report = {"median_bytes_per_s": med, "all": res, "wan_rate_bytes_per_s": link, "thesis": thesis,
              "eltonfs_cold": efs, "ceiling": raw,
              "cluster_vs_local": med["cluster"] / med["local"], "wan_vs_link": med["wan"] / link}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"""
| read (median of {args.rounds}) | throughput | against |
|---|---|---|
| GET on the writing host ({args.size_mib} MiB) | {med['local'] / 1e6:.0f} MB/s | |
| cold, from another host of the cluster | {med['cluster'] / 1e6:.0f} MB/s | {report['cluster_vs_local']:.0%} of the local GET |
| the same read again on that host (its cached copy) | {med['again'] / 1e6:.0f} MB/s | |
| cold, across a {args.wan_rate} WAN link ({args.wan_size_mib} MiB) | {med['wan'] / 1e6:.1f} MB/s | {report['wan_vs_link']:.0%} of the link |
| warm, from the reader's cache | {med['warm'] / 1e6:.0f} MB/s | |

| 64 MiB written in cluster 1, read 3 times by each of 3 hosts of cluster 2 | bytes into cluster 2 |
|---|---|
| Elton (reads through each host's eltond) | {thesis['elton'] / 2**20:.1f} MiB |
| one central server (every read from cluster 1) | {thesis['central'] / 2**20:.1f} MiB |

| committed file ({args.wan_size_mib} MiB), read cold on another host of the cluster | throughput |
|---|---|
| through eltonfs (fresh mount, empty cache) | {efs['eltonfs'] / 1e6:.0f} MB/s ({efs['eltonfs'] / efs['fetch']:.0%} of the next line) |
| the host's own fetch (GET of a fresh version of the same size) | {efs['fetch'] / 1e6:.0f} MB/s |
""")
    if raw is not None:
        kept = statistics.median(raw["direct"])
        print(ceiling.table(raw))
        print(f"\nThe raw read that keeps its copy with O_DIRECT: {kept / med['local']:.0%} of eltond's local GET; "
              f"eltond's cold read: {report['cluster_vs_local']:.0%}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
