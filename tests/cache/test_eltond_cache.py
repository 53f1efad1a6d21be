"""Two real eltond processes in one cluster: host B, with a tiny cache quota, reads files written on
host A. B's cache stays under its quota, evicting its least recently used copies; A's own chunks are
never evicted; an evicted file reads again correctly (fetched again); and the cluster's master stops
listing B as a holder of what B evicted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.eltond_process import EltondProcess

QUOTA = 3 << 20
FILES = 4
SIZE = 1536 << 10  # about 2-3 chunks each: the four files are twice B's quota


def holders_of(node, key: str) -> list[str]:
    return node.client().where(key).get("holders_of_latest", [])


def wait_until(check, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {limit} s")
        time.sleep(0.1)


def test_reader_cache_stays_under_quota_and_evicted_copies_leave_the_holder_index(tmp_path: Path) -> None:
    a = EltondProcess(tmp_path / "a", "--cluster", "c1", "--role", "both",
                      env={"ELTON_COPIES": "1", "ELTON_CACHE_QUOTA": "1MiB"}).start()
    b: EltondProcess | None = None
    try:
        ca = a.client()
        st = ca.status()
        a_id, gossip = st["node_id"], st["gossip"]
        b_args = ("--cluster", "c1", "--role", "node", "--join", gossip, "--cache-quota", "3MiB")
        b = EltondProcess(tmp_path / "b", *b_args, "--token", ca.mesh_token()).start()
        cb = b.client()
        b_id = cb.status()["node_id"]
        assert cb.status()["cache"]["quota_bytes"] == QUOTA
        assert ca.status()["cache"]["quota_bytes"] == 1 << 20

        files = {f"cache/f{i}": os.urandom(SIZE) for i in range(FILES)}
        for key, data in files.items():
            ca.put(key, data)
        a_chunks = ca.status()["store"]["chunks"]
        a_bytes = ca.status()["store"]["bytes"]
        assert a_bytes >= FILES * SIZE > 1 << 20, "A's own chunks exceed A's quota: none may go"
        # B evicts a copy only once the masters confirm another live holder (A); A's holder reports
        # go out every second, and until one lists its new chunks B keeps its copies as last copies
        time.sleep(3)

        for key, data in files.items():  # oldest first: f0 is the least recently used at the end
            assert cb.read(key) == data
            cache = cb.stats()["cache"]
            assert cache["used_bytes"] <= QUOTA, cache
        cache = cb.stats()["cache"]
        assert cache["evictions"] > 0 and cache["evicted_bytes"] > 0, sorted(cache.items())
        assert cache["uncached"] == 0, ("with nothing in use every fetched chunk had room", sorted(cache.items()))
        assert cb.status()["store"]["bytes"] <= QUOTA, "B holds nothing but cached copies"

        # A's chunks are its own: never counted, never evicted, all still there
        a_cache = ca.stats()["cache"]
        assert (a_cache["evictions"], a_cache["used_bytes"]) == (0, 0)
        assert (ca.status()["store"]["chunks"], ca.status()["store"]["bytes"]) == (a_chunks, a_bytes)
        for key, data in files.items():
            assert ca.read(key) == data

        # the master (A) lists B for the last file it read, not for the first, which B evicted
        last, first = f"cache/f{FILES - 1}", "cache/f0"
        wait_until(lambda: b_id in holders_of(a, last), 30, "B reported as holder of the last file")
        wait_until(lambda: b_id not in holders_of(a, first), 30, "B's evicted copies dropped from the index")
        assert holders_of(a, first) == [a_id]

        # the evicted file is fetched again, correctly, and the cache still keeps to its quota
        misses = cb.stats()["cache"]["misses"]
        assert cb.read(first) == files[first]
        after = cb.stats()["cache"]
        assert after["misses"] > misses and after["used_bytes"] <= QUOTA
        wait_until(lambda: b_id in holders_of(a, first), 30, "B holding the re-read file again")

        with urllib.request.urlopen(f"{b.url}/v1/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert f"elton_cache_quota_bytes {QUOTA}" in text
        assert "elton_cache_evictions_total" in text and "elton_cache_bytes " in text
        out = subprocess.run([sys.executable, "-m", "mesh.cli.elton", "stats"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "ELTON_HOST": b.url})
        assert out.returncode == 0 and "cached copies:" in out.stdout and "of 3.0 MiB" in out.stdout, out
        out = subprocess.run([sys.executable, "-m", "mesh.cli.eltond", "status", "--data-dir", str(b.data_dir)],
                             capture_output=True, text=True, timeout=60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("cache:")), "")
        assert out.returncode == 0 and "of 3.0 MiB in" in line and "evicted" in line, out

        # a restart keeps the cached copies (and their order): the re-read file is still here
        used = after["used_bytes"]
        b.stop()
        b = EltondProcess(tmp_path / "b", *b_args).start()
        cb = b.client()
        assert cb.stats()["cache"]["used_bytes"] == used
        misses = cb.stats()["cache"]["misses"]
        assert cb.read(first) == files[first]
        assert cb.stats()["cache"]["misses"] == misses, "the copies kept across the restart were fetched again"
    finally:
        if b is not None:
            b.stop()
        a.stop()
