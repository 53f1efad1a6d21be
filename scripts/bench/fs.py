"""Filesystem benchmark: local vs eltonfs vs GlusterFS, side by side in one run, medians of rounds.

Targets:
  local          a directory on the disk under --workdir
  glusterfs      a one-brick volume on 127.0.0.2 (created with `force`), FUSE-mounted
  eltonfs-upper  a mounted volume: new files go to the local upper layer
  eltonfs-lower  a file committed, then read through a fresh mount: cold (empty cache, fetched
                 from eltond) and warm (second read)
  remote         (network namespaces, one cluster of 3 hosts) a --remote-mib file committed through
                 eltonfs on c1h2, read cold with dd bs=1M through a fresh mount on a host holding none
                 of its chunks (c1h3 or c1h1: the commit copies them to one), beside a cold fetch of a
                 fresh version of the same size (curl GET, as `elton get`): the issue's
                 "cold read on another host at least 80% of that host's fetch throughput"
Tests: bonnie++ as the thesis ran it (-n 0 -s 2048 -r 1024 -u root), fio sequential 1 MiB write
(end_fsync) and read, dd bs=8k count=8192 write (conv=fsync) then read; reads warm (just written) and cold (page cache
dropped first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.eltond_process import EltondProcess  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
GLUSTER_VOLUME = "eltonbench"
MB = 1e6


def sh(*argv: str | Path, check: bool = True, timeout: float = 900) -> str:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout + r.stderr


PEERS = {"fio": "fio", "bonnie++": "bonnie++", "glusterd": "glusterfs-server"}


def ensure_peers() -> None:
    """Install the benchmark's peers from Debian's packages when they are missing."""
    missing = [pkg for tool, pkg in PEERS.items() if not shutil.which(tool)]
    if missing:
        print(f"bench fs: installing {' '.join(missing)}", file=sys.stderr)
        sh("apt-get", "update", "-qq")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- the tests ------------------------------------------------------------------------------------
def dd_write(d: Path) -> float:
    out = sh("dd", "if=/dev/zero", f"of={d / 'dd.bin'}", "bs=8k", "count=8192", "conv=fsync")
    return _dd_rate(out)


def dd_read(d: Path) -> float:
    return _dd_rate(sh("dd", f"if={d / 'dd.bin'}", "of=/dev/null", "bs=8k"))


def _dd_rate(out: str) -> float:
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", out)
    if not m:
        raise RuntimeError(f"dd said: {out}")
    return int(m.group(1)) / float(m.group(2))


def fio(d: Path, rw: str, size: str) -> float:
    out = sh("fio", "--name=seq", f"--rw={rw}", "--bs=1M", f"--size={size}", f"--filename={d / 'fio.bin'}",
             "--ioengine=psync", "--end_fsync=1" if rw == "write" else "--invalidate=0",
             "--output-format=json")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job["write" if rw == "write" else "read"]["bw_bytes"]


def bonnie(d: Path) -> dict[str, float | None]:
    out = sh("bonnie++", "-d", d, "-n", "0", "-s", "2048", "-r", "1024", "-u", "root", "-q", timeout=1800)
    line = [x for x in out.splitlines() if x.startswith("1.98,") or x.startswith("1.97,")][-1].split(",")
    # format_version, version, name, concurrency, seed, size, -, chunk, procs, putc, %, put_block, %,
    # rewrite, %, getc, %, get_block, %, seeks, %  (K/s; '+++++' means too fast to measure)
    def k(i: int) -> float | None:
        return float(line[i]) * 1024 if line[i].replace(".", "").isdigit() else None

    return {"block_write": k(11), "rewrite": k(13), "block_read": k(17)}


# -- the targets ----------------------------------------------------------------------------------
class Gluster:
    def __init__(self, work: Path) -> None:
        self.brick = work / "gluster-brick"
        self.mnt = work / "gluster-mnt"
        self.started_glusterd = False

    def up(self) -> Path:
        if not shutil.which("glusterd"):
            raise RuntimeError("glusterfs-server is not installed (apt-get install glusterfs-server)")
        if subprocess.run(["pgrep", "-x", "glusterd"], capture_output=True).returncode != 0:
            sh("glusterd", "--log-level=WARNING")
            self.started_glusterd = True
            time.sleep(2)
        self._delete_volume()
        self.brick.mkdir(parents=True)
        self.mnt.mkdir(parents=True)
        sh("gluster", "--mode=script", "volume", "create", GLUSTER_VOLUME, f"127.0.0.2:{self.brick}", "force")
        sh("gluster", "--mode=script", "volume", "start", GLUSTER_VOLUME)
        sh("mount", "-t", "glusterfs", f"127.0.0.2:/{GLUSTER_VOLUME}", self.mnt)
        return self.mnt

    def _delete_volume(self) -> None:
        sh("gluster", "--mode=script", "volume", "stop", GLUSTER_VOLUME, "force", check=False)
        sh("gluster", "--mode=script", "volume", "delete", GLUSTER_VOLUME, check=False)

    def down(self) -> None:
        sh("umount", "-l", self.mnt, check=False)
        self._delete_volume()
        if self.started_glusterd:
            sh("pkill", "-x", "glusterd", check=False)
            sh("pkill", "-f", "glusterfsd.*" + GLUSTER_VOLUME, check=False)


class Eltonfs:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.node = EltondProcess(work / "eltond")
        self.mounts: list[Path] = []

    def up(self) -> None:
        self.node.start()
        self.run("init", "bench/vol")

    def run(self, *args: str | Path) -> str:
        return sh(VENV_BIN / "eltonfs", *args[:1], *args[1:], *(() if args[0] in ("commit", "umount", "status")
                                                                  else ("--host", self.node.url)))

    def mount(self, name: str, spec: str = "bench/vol") -> Path:
        mnt = self.work / name
        mnt.mkdir(parents=True, exist_ok=True)
        cache = self.work / f"{name}-cache"
        self.run("mount", spec, mnt, "--cache-dir", cache)
        self.mounts.append(mnt)
        return mnt

    def umount(self, mnt: Path) -> None:
        self.run("umount", mnt)
        self.mounts.remove(mnt)

    def down(self) -> None:
        for mnt in list(self.mounts):
            sh(VENV_BIN / "eltonfs", "umount", mnt, check=False)
            sh("umount", "-l", mnt, check=False)
        self.node.stop()


def read_whole(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return path.stat().st_size / (time.perf_counter() - t)


def remote_cold_read(rounds: int, mib: int, work: Path, profile: Path | None = None) -> dict[str, float]:
    """Medians of ``rounds``: a committed file read cold through eltonfs on another host, and that
    host's fetch (GET) of a fresh version of the same size; each round uses new content (the round
    itself is ``tests.harness.cold.eltonfs_cold_read``, which ``scripts/bench/fetch`` runs too)."""
    from tests.harness.cold import eltonfs_cold_read
    from tests.harness.netns import Harness
    from tests.harness.test_mesh import converged

    through: list[float] = []
    fetch: list[float] = []
    with Harness(work / "mesh", clusters=1, hosts=3, health_timeout=60) as h:
        converged(h)
        for i in range(rounds):
            r = eltonfs_cold_read(h, "bench/remote", work, mib, f"r{i}", profile)
            through.append(float(r["eltonfs"]))
            fetch.append(float(r["fetch"]))
            print(f"remote round {i}: eltonfs cold {through[-1] / MB:.0f} MB/s, GET {fetch[-1] / MB:.0f} MB/s "
                  f"(read on {r['reader']})", file=sys.stderr)
    return {"eltonfs_cold_read": statistics.median(through), "host_fetch_get": statistics.median(fetch)}


def median_of(rounds: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(rounds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fio-size", default="1G")
    ap.add_argument("--no-bonnie", action="store_true")
    ap.add_argument("--targets", default="local,eltonfs,glusterfs,remote")
    ap.add_argument("--remote-mib", type=int, default=1024, help="size of the file read cold on another host")
    ap.add_argument("--profile", type=Path, default=None,
                    help="remote: py-spy the mount during each cold read; stacks and mount logs go to this directory")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "fs.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench fs: needs root (mounts, drop_caches)", file=sys.stderr)
        return 1
    ensure_peers()
    targets = args.targets.split(",")
    work = Path(tempfile.mkdtemp(prefix="elton-fsbench-", dir=args.workdir))
    results: dict[str, dict[str, float | None]] = {}

    def measure(name: str, d: Path, *, write: bool = True, cold: bool = True) -> None:
        r: dict[str, float | None] = {}
        if write:
            r["dd_write"] = median_of(args.rounds, lambda: dd_write(d))
            r["fio_write"] = median_of(args.rounds, lambda: fio(d, "write", args.fio_size))
        r["dd_read"] = median_of(args.rounds, lambda: dd_read(d))
        r["fio_read"] = median_of(args.rounds, lambda: fio(d, "read", args.fio_size))
        if cold:
            r["dd_read_cold"] = median_of(args.rounds, lambda: (drop_caches(), dd_read(d))[1])
            r["fio_read_cold"] = median_of(args.rounds, lambda: (drop_caches(), fio(d, "read", args.fio_size))[1])
        if write and not args.no_bonnie:
            r.update({f"bonnie_{k}": v for k, v in bonnie(d).items()})
        results[name] = r
        print(f"{name}: " + ", ".join(f"{k} {v / MB:.0f} MB/s" for k, v in r.items() if v), file=sys.stderr)

    gluster = Gluster(work)
    elton = Eltonfs(work)
    try:
        if "local" in targets:
            local = work / "local"
            local.mkdir()
            measure("local", local)
        if "eltonfs" in targets:
            elton.up()
            upper = elton.mount("mnt-upper")
            measure("eltonfs-upper", upper)
            elton.run("commit", upper, "-m", "bench files")
            elton.umount(upper)
            drop_caches()
            cold = elton.mount("mnt-cold")
            # the first read of each committed file fetches it from eltond (one round only: after it,
            # the file is in the mount's persistent cache); the warm rounds then never include a fetch
            results["eltonfs-lower-cold"] = {"dd_read": dd_read(cold), "fio_read": read_whole(cold / "fio.bin")}
            measure("eltonfs-lower-warm", cold, write=False, cold=False)
            elton.umount(cold)
        if "glusterfs" in targets:
            measure("glusterfs", gluster.up())
        if "remote" in targets:
            results["remote"] = remote_cold_read(args.rounds, args.remote_mib, work, args.profile)
    finally:
        elton.down()
        gluster.down()
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    metrics = sorted({m for r in results.values() for m in r})
    names = list(results)
    print(f"\n| MB/s (median of {args.rounds}) | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for m in metrics:
        cells = []
        for n in names:
            v = results[n].get(m)
            cells.append("" if m not in results[n] else ("+++++" if v is None else f"{v / MB:.0f}"))
        print(f"| {m} | " + " | ".join(cells) + " |")
    if "local" in results:
        for n in names:
            if n != "local":
                ratios = [f"{m} {results[n][m] / results['local'][m]:.0%}" for m in metrics
                          if results[n].get(m) and results["local"].get(m)]
                print(f"{n} / local: " + ", ".join(ratios))
    if "remote" in results:
        r = results["remote"]
        print(f"\ncold read of a committed {args.remote_mib} MiB file on another host (holding none of it), medians of "
              f"{args.rounds}: eltonfs (dd bs=1M) {r['eltonfs_cold_read'] / MB:.0f} MB/s, that host's fetch "
              f"(GET) {r['host_fetch_get'] / MB:.0f} MB/s: "
              f"{r['eltonfs_cold_read'] / r['host_fetch_get']:.0%} (goal: at least 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
