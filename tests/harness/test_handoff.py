"""Issue 4's hand-off with real processes: a master joins (keys whose home moves to it keep their
counters), then a master leaves gracefully (``eltond stop``: SIGTERM) while writers commit to the
keys it was home of, and not one commit fails.

3 clusters x 2 masters start; a seventh master (c1h3) joins later. c2h3 and c3h3 are never started.
Commits go over HTTP to the writer host's own eltond (as in ``scripts/bench/commit``); a writer never
retries: a failed PUT counts as a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.netns import DAEMON_CMD, Harness

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]

KEYS = [f"handoff/k{i:03d}" for i in range(120)]
FIRST = ["c1h1", "c1h2", "c2h1", "c2h2", "c3h1", "c3h2"]
LATE = "c1h3"

# Runs inside a host's namespace against its own eltond. Modes:
#   where KEYS            -> {key: where-json}
#   put KEYS              -> [[key, status, version, parent, seconds]], one PUT per key, in order
#   load KEYS STOPFILE    -> the same, round-robin over KEYS until STOPFILE exists
CLIENT = r"""
import json, os, sys, time, urllib.error, urllib.request
base = "http://127.0.0.1:7420"
mode, keys = sys.argv[1], json.loads(sys.argv[2])
def put(key, n):
    t = time.time()
    req = urllib.request.Request(f"{base}/v1/keys/{key}", data=f"{key} write {n}".encode(), method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.load(r)
            return [key, r.status, body["version"], body.get("parent"), time.time() - t, ""]
    except urllib.error.HTTPError as e:
        return [key, e.code, None, None, time.time() - t, e.read().decode()[:300]]
    except Exception as e:
        return [key, 0, None, None, time.time() - t, repr(e)[:300]]
if mode == "where":
    print(json.dumps({k: json.load(urllib.request.urlopen(f"{base}/v1/where/{k}", timeout=10)) for k in keys}))
elif mode == "put":
    print(json.dumps([put(k, i) for i, k in enumerate(keys)]))
else:
    out, i = [], 0
    while not os.path.exists(sys.argv[3]):
        out.append(put(keys[i % len(keys)], i))
        i += 1
    print(json.dumps(out))
"""


class LateHarness(Harness):
    """Starts only the hosts in FIRST; the others are started by the test (``start_daemon``)."""

    def _start_daemons(self) -> None:
        assert self.state is not None
        first = [x for x in self.state.hosts if x.name in FIRST]
        seed, rest = first[0], first[1:]
        self._spawn_daemons([seed])
        self._wait_healthy([seed])
        self.token = self._join_token(seed)
        self._spawn_daemons(rest)

    def _wait_healthy(self, hosts=None) -> None:  # type: ignore[no-untyped-def]
        assert self.state is not None
        super()._wait_healthy([x for x in self.state.hosts if x.pid is not None] if hosts is None else hosts)


def client(h: Harness, host: str, *args: str, timeout: float = 120) -> object:
    r = h.exec(host, [sys.executable, "-c", CLIENT, *args], timeout=timeout)
    assert r.returncode == 0, (host, args[0], r.stderr[-2000:])
    return json.loads(r.stdout)


def members(h: Harness, host: str) -> dict[str, str]:
    r = h.exec(host, [sys.executable, "-c", "import urllib.request;print(urllib.request.urlopen("
                      "'http://127.0.0.1:7420/v1/members',timeout=5).read().decode())"], timeout=30)
    assert r.returncode == 0, r.stderr
    return {m["id"]: m["state"] for m in json.loads(r.stdout)["members"]}


def node_id(h: Harness, host: str) -> str:
    r = h.exec(host, [sys.executable, "-c", "import urllib.request;print(urllib.request.urlopen("
                      "'http://127.0.0.1:7420/v1/health',timeout=5).read().decode())"], timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["node_id"]


def settle(h: Harness, running: list[str], alive: set[str], gone: set[str] = frozenset(), timeout: float = 60) -> None:
    """Wait until every running host sees exactly ``alive`` alive and ``gone`` not alive."""
    deadline = time.time() + timeout
    while True:
        views = {n: members(h, n) for n in running}
        ok = all({i for i, s in v.items() if s == "alive"} >= alive and not any(v.get(g) == "alive" for g in gone)
                 for v in views.values())
        if ok:
            return
        assert time.time() < deadline, f"views did not settle: {views}"
        time.sleep(0.5)


def homes(h: Harness, hosts: list[str], keys: list[str], epoch: int | None = None, timeout: float = 60) -> dict:
    """The home of each key, agreed by every host in ``hosts`` (and at roster ``epoch``, if given)."""
    deadline = time.time() + timeout
    while True:
        views = {n: client(h, n, "where", json.dumps(keys)) for n in hosts}
        first = views[hosts[0]]
        agreed = all(v[k]["home"] == first[k]["home"] for v in views.values() for k in keys)
        epochs = {v[k]["epoch"] for v in views.values() for k in keys}
        if agreed and (epoch is None or epochs == {epoch}):
            return {k: first[k]["home"] for k in keys}
        assert time.time() < deadline, f"homes not agreed (epochs {epochs})"
        time.sleep(0.5)


def check_sequential(results: list, last: dict[str, int]) -> None:
    """Every PUT succeeded and got the previous version + 1, with the previous version as its parent."""
    for key, status, version, parent, _, err in results:
        assert status == 201, (key, status, err)
        assert version == last[key] + 1 and parent == last[key], (key, "expected", last[key] + 1, "got", version, parent)
        last[key] = version


def test_join_and_graceful_leave_hand_off_counters(tmp_path: Path) -> None:
    cmd = "env ELTON_GOSSIP_PROFILE=lan " + DAEMON_CMD
    with LateHarness(tmp_path, clusters=3, hosts=3, masters_per_cluster=3, daemon_cmd=cmd, health_timeout=60) as h:
        ids = {n: node_id(h, n) for n in FIRST}
        settle(h, FIRST, set(ids.values()))
        before = homes(h, FIRST, KEYS)
        last = dict.fromkeys(KEYS, 0)
        # two commits per key, from two clusters
        check_sequential(client(h, "c1h1", "put", json.dumps(KEYS)), last)
        check_sequential(client(h, "c2h1", "put", json.dumps(KEYS)), last)

        # ---- a master joins ----
        h.start_daemon(LATE)
        ids[LATE] = node_id(h, LATE)
        running = [*FIRST, LATE]
        settle(h, running, set(ids.values()))
        after = homes(h, running, KEYS, epoch=7)
        moved = [k for k in KEYS if after[k] != before[k]]
        assert moved and all(after[k] == ids[LATE] for k in moved), (moved, after)
        # the next commit of every key (moved ones first) is last + 1, from a host of another cluster
        stay = [k for k in KEYS if k not in moved]
        check_sequential(client(h, "c3h1", "put", json.dumps(moved)), last)
        where = client(h, LATE, "where", json.dumps(moved))
        for k in moved:  # the new home reports the version it issued
            assert where[k]["home"] == ids[LATE] and where[k]["latest_known"] == last[k], (k, where[k], last[k])
        check_sequential(client(h, "c3h1", "put", json.dumps(stay)), last)
        check_sequential(client(h, LATE, "put", json.dumps(moved)), last)

        # ---- a master leaves gracefully while writers commit to its keys ----
        by_home = {n: [k for k in KEYS if after[k] == i] for n, i in ids.items()}
        victim = "c1h2"  # in the writer c1h1's cluster: its last other store host, so copies race the leave too
        theirs = by_home[victim]
        assert len(theirs) >= 4, by_home
        writers = {"c1h1": theirs[0::2], "c3h1": theirs[1::2]}
        stop = tmp_path / "stop-writers"
        procs = {w: h.popen(w, [sys.executable, "-c", CLIENT, "load", json.dumps(ks), str(stop)],
                            stdout=subprocess.PIPE, text=True)
                 for w, ks in writers.items()}
        time.sleep(3)
        t_stop = time.time()
        h.kill_daemon(victim, signal.SIGTERM)  # what `eltond stop` sends; returns once it exited
        stopped_in = time.time() - t_stop
        running.remove(victim)
        settle(h, running, {ids[n] for n in running}, gone={ids[victim]})
        time.sleep(3)
        stop.touch()
        loads = {w: json.loads(p.communicate(timeout=120)[0]) for w, p in procs.items()}
        failed = [r for res in loads.values() for r in res if r[1] != 201]
        slow = max(r[4] for res in loads.values() for r in res)
        assert not failed, f"{len(failed)} commits failed during the graceful leave: {failed[:5]}"
        for res in loads.values():
            check_sequential(res, last)  # one writer per key: each version is the previous + 1
        assert sum(len(r) for r in loads.values()) > 2 * len(theirs), loads
        # the keys have new homes; their next commit is still last + 1, and the new home says so
        new = homes(h, running, theirs)
        assert all(new[k] != ids[victim] for k in theirs)
        check_sequential(client(h, "c2h1", "put", json.dumps(theirs)), last)
        for n in {new[k] for k in theirs}:
            name = next(x for x, i in ids.items() if i == n)
            mine = [k for k in theirs if new[k] == n]
            where = client(h, name, "where", json.dumps(mine))
            assert all(where[k]["latest_known"] == last[k] for k in mine), (name, where, last)
        print(f"moved on join: {len(moved)} of {len(KEYS)}; victim {victim} home of {len(theirs)}, "
              f"stopped in {stopped_in:.1f} s; commits during the leave: "
              f"{sum(len(r) for r in loads.values())}, slowest {slow:.2f} s")
