"""Which host of a harness mesh would read a file cold: benchmarks use it so that a "fetch" is a
fetch, not a local read (``copies = 2`` puts every commit's chunks on a second host of the
writer's cluster, and a reader that is that host reads its own disk); and the eltonfs cold read
both benchmarks measure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.core.manifest import chunk_hash
from mesh.store.chunker import chunk_stream
from tests.harness.netns import HTTP_ADDR, Harness


def chunk_hashes(path: Path) -> list[str]:
    """The chunks eltond and eltonfs cut ``path`` into (both use the same content-defined chunker)."""
    with open(path, "rb") as f:
        return [chunk_hash(c) for c in chunk_stream(f)]


def missing_on(h: Harness, host: str, hashes: list[str]) -> int:
    body = Path(h.host(host).data_dir) / "missing-query.json"
    body.write_text(json.dumps({"hashes": hashes}))
    r = h.exec(host, ["curl", "-sS", "-f", "-X", "POST", "-H", "Content-Type: application/json",
                      "--data-binary", f"@{body}", f"http://{HTTP_ADDR}/v1/chunks/missing"], timeout=60)
    body.unlink(missing_ok=True)
    if r.returncode != 0:
        raise RuntimeError(f"missing-chunks query on {host}: {r.stderr}")
    return len(json.loads(r.stdout)["missing"])


def cold_reader(h: Harness, hashes: list[str], candidates: tuple[str, ...]) -> str:
    """The first candidate holding none of ``hashes``."""
    for host in candidates:
        if missing_on(h, host, hashes) == len(set(hashes)):
            return host
    raise RuntimeError(f"each of {', '.join(candidates)} holds some of the chunks: no cold reader")


def eltonfs(h: Harness, host: str, *args: str | Path) -> None:
    """Run ``eltonfs`` in a host's network namespace (mounts are seen by every namespace)."""
    r = subprocess.run(["nsenter", f"--net=/var/run/netns/{h.netns_of(host)}", str(h.venv / "bin" / "eltonfs"),
                        *map(str, args)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"eltonfs {' '.join(map(str, args))} on {host}: {r.stderr}")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _random_file(path: Path, mib: int) -> None:
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}"], check=True,
                   capture_output=True)


def eltonfs_cold_read(h: Harness, volume: str, work: Path, mib: int, tag: str,
                      profile: Path | None = None) -> dict[str, float | str]:
    """One round of issue #6's cold read, shared by ``scripts/bench/fetch`` and ``scripts/bench/fs``:
    ``mib`` of new random content committed through eltonfs on c1h2 into ``volume`` (made first if
    new), then read with ``dd bs=1M`` through a fresh mount with an empty cache on a host of the
    cluster holding none of its chunks, timed from before the open (the open starts the fetch);
    beside it, a cold GET of a fresh version of the same size on a host holding none of it (that
    host's fetch throughput). With ``profile``, py-spy records the mount process during the read.
    Returns bytes/s of both and the reading host."""
    a, b = work / f"efs-{tag}-writer", work / f"efs-{tag}-reader"
    a.mkdir()
    b.mkdir()
    content = work / f"efs-{tag}.bin"
    _random_file(content, mib)
    ensure_volume(h, volume)
    eltonfs(h, "c1h2", "mount", volume, a, "--cache-dir", work / f"efs-{tag}-ca")
    try:
        shutil.copyfile(content, a / f"{tag}.bin")
        eltonfs(h, "c1h2", "commit", a, "-m", tag)
    finally:
        eltonfs(h, "c1h2", "umount", a)
    shutil.rmtree(work / f"efs-{tag}-ca", ignore_errors=True)
    reader = cold_reader(h, chunk_hashes(content), ("c1h3", "c1h1"))  # the commit put a copy on one of them
    content.unlink()
    eltonfs(h, reader, "mount", volume, b, "--cache-dir", work / f"efs-{tag}-cb")
    spy: subprocess.Popen[bytes] | None = None
    try:
        drop_caches()
        if profile is not None:
            spy = _profile(b, profile / f"mount-{tag}.txt")
        t = time.perf_counter()
        subprocess.run(["dd", f"if={b / f'{tag}.bin'}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
        through = (mib << 20) / (time.perf_counter() - t)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        eltonfs(h, reader, "umount", b)
        log = work / f"efs-{tag}-cb" / "mount.log"
        if profile is not None and log.exists():
            shutil.copyfile(log, profile / f"mount-{tag}.log")
        shutil.rmtree(work / f"efs-{tag}-cb", ignore_errors=True)
    src = Path(h.host("c1h2").data_dir) / f"get-{tag}.bin"
    _random_file(src, mib)
    put = h.exec("c1h2", [str(h.venv / "bin" / "elton"), "put", f"{volume}-get", str(src)], timeout=900)
    if put.returncode != 0:
        raise RuntimeError(f"put on c1h2: {put.stderr}")
    version = int(put.stdout.strip().rsplit("@", 1)[1])
    getter = cold_reader(h, chunk_hashes(src), (reader, "c1h3", "c1h1"))  # a fetch, not a local read
    src.unlink()
    drop_caches()
    got = h.exec(getter, ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{speed_download}",
                          f"http://{HTTP_ADDR}/v1/keys/{volume}-get?version={version}"], timeout=900)
    if got.returncode != 0:
        raise RuntimeError(f"GET on {getter}: {got.stderr}")
    return {"eltonfs": through, "fetch": float(got.stdout), "reader": reader}


def ensure_volume(h: Harness, volume: str) -> None:
    """``eltonfs init`` once per harness and volume."""
    made = Path(h.dir) / f"volume-{volume.replace('/', '_')}"
    if not made.exists():
        eltonfs(h, "c1h2", "init", volume, "--host", f"http://{HTTP_ADDR}")
        made.touch()


def _profile(mountpoint: Path, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the process serving ``mountpoint``, raw stacks of every thread at 200 Hz."""
    pid = subprocess.run(["pgrep", "-f", f"fs.cli mount .* {mountpoint} .*--foreground"], capture_output=True, text=True).stdout.split()
    if not pid:
        raise RuntimeError(f"no mount process for {mountpoint}")
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(Path(sys.prefix) / "bin" / "py-spy"), "record", "-r", "200", "-f", "raw", "--threads",
                            "-o", str(out), "-p", pid[0]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return spy
