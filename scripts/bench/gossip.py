"""Gossip benchmark on real eltond processes in network namespaces (scripts/mesh-netns).

Propagation: a host leaves gracefully (eltond stop) and later restarts; we time until every other
host's /v1/members shows it left, then alive again (counted from the restart, so the process's own
start-up is included), and how long a kill -9 takes to be seen dead by all. Medians of --rounds.
Traffic: each host's eth0 carries only mesh traffic (its HTTP API is on loopback in its own
namespace), so eth0 byte counters over a window are its gossip bytes per second.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.harness.netns import Harness  # noqa: E402
from tests.harness.test_mesh import converged, node_id, results, watch  # noqa: E402


def eth0_bytes(h: Harness, name: str) -> int:
    out = h.exec(name, ["cat", "/sys/class/net/eth0/statistics/tx_bytes", "/sys/class/net/eth0/statistics/rx_bytes"])
    tx, rx = (int(x) for x in out.stdout.split())
    return tx + rx


def traffic(h: Harness, seconds: float) -> dict[str, float]:
    names = [x.name for x in h.hosts]
    start = {n: eth0_bytes(h, n) for n in names}
    time.sleep(seconds)
    return {n: (eth0_bytes(h, n) - start[n]) / seconds for n in names}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per traffic measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gossip.json")
    args = ap.parse_args()
    leave, join, dead = [], [], []
    with tempfile.TemporaryDirectory(prefix="elton-gossip-") as work, Harness(Path(work), clusters=3, hosts=3, health_timeout=60) as h:
        converged(h)
        idle = traffic(h, args.window)
        victims = ["c2h2", "c3h1", "c1h3"]
        for r in range(args.rounds):
            victim = victims[r % len(victims)]
            vid = node_id(h, victim)
            others = [x.name for x in h.hosts if x.name != victim]
            w = watch(h, others, vid, "left", timeout=60)
            time.sleep(0.3)
            t0 = time.time()
            h.kill_daemon(victim, signal.SIGTERM)
            leave.append(max(x["t"] for x in results(w).values()) - t0)
            w = watch(h, others, vid, "alive", timeout=60)
            t0 = time.time()  # from the process start: Python start-up and the join are included
            h.start_daemon(victim)
            join.append(max(x["t"] for x in results(w).values()) - t0)
            converged(h)
            print(f"round {r + 1}: leave {leave[-1]:.2f} s, join {join[-1]:.2f} s", file=sys.stderr)
        for victim in victims:
            vid = node_id(h, victim)
            others = [x.name for x in h.hosts if x.name != victim]
            w = watch(h, others, vid, "dead", timeout=60)
            time.sleep(0.3)
            t0 = time.time()
            h.kill_daemon(victim)
            dead.append(max(x["t"] for x in results(w).values()) - t0)
            h.start_daemon(victim)
            converged(h)
        # churn: one host stops and restarts in turn while we count bytes
        import threading

        stop = threading.Event()

        def churn() -> None:
            i = 0
            while not stop.is_set():
                victim = ["c1h2", "c2h3", "c3h2"][i % 3]
                h.kill_daemon(victim, signal.SIGTERM)
                time.sleep(1.0)
                h.start_daemon(victim)
                time.sleep(1.0)
                i += 1

        t = threading.Thread(target=churn)
        t.start()
        busy = traffic(h, args.window)
        stop.set()
        t.join()
    masters = [n for n in idle if n.endswith("h1")]
    report = {
        "leave_reaches_all_s": {"median": statistics.median(leave), "all": leave},
        "join_reaches_all_s": {"median": statistics.median(join), "all": join},
        "kill9_seen_dead_by_all_s": {"median": statistics.median(dead), "all": dead},
        "bytes_per_s_idle": idle, "bytes_per_s_churn": busy,
        "per_master_idle": statistics.mean(idle[n] for n in masters),
        "per_master_churn": statistics.mean(busy[n] for n in masters),
        "per_host_idle": statistics.mean(idle.values()), "per_host_churn": statistics.mean(busy.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"""
| 9 hosts, 3 clusters (lan profile) | median | all rounds |
|---|---|---|
| graceful leave seen by all | {report['leave_reaches_all_s']['median']:.2f} s | {len(leave)} |
| restart (process start included) seen alive by all | {report['join_reaches_all_s']['median']:.2f} s | {len(join)} |
| kill -9 seen dead by all | {report['kill9_seen_dead_by_all_s']['median']:.2f} s | {len(dead)} |

| gossip traffic (tx+rx on the host's link) | idle | churn (a host restarts every 2 s) |
|---|---|---|
| per master | {report['per_master_idle'] / 1e3:.1f} kB/s | {report['per_master_churn'] / 1e3:.1f} kB/s |
| per host (mean of 9) | {report['per_host_idle'] / 1e3:.1f} kB/s | {report['per_host_churn'] / 1e3:.1f} kB/s |
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
