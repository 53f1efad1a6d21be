"""Issue 3 with real eltond processes: 3 clusters x 3 hosts in network namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import Harness

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]

DEAD_WITHIN = 5.0  # the default (lan) profile's promise

# Polls the host's own eltond until member TARGET is in one of the STATES (or absent, if "absent" is
# one of them); prints the wall time it saw it. Runs inside a host's namespace.
WATCH = r"""
import json, sys, time, urllib.request
target, states, deadline = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
while time.time() < deadline:
    try:
        view = json.load(urllib.request.urlopen("http://127.0.0.1:7420/v1/members", timeout=1))
        st = {m["id"]: m for m in view["members"]}.get(target)
        state = st["state"] if st else "absent"
        if state in states:
            print(json.dumps({"t": time.time(), "state": state, "inc": st and st["incarnation"]}))
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.02)
sys.exit(1)
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(tmp_path_factory.mktemp("mesh"), clusters=3, hosts=3, health_timeout=60) as h:  # up() on enter
        yield h


def view(h: Harness, host: str) -> dict:
    r = h.exec(host, [sys.executable, "-c", "import json,urllib.request;print(urllib.request.urlopen("
                      "'http://127.0.0.1:7420/v1/members',timeout=5).read().decode())"], timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def node_id(h: Harness, host: str) -> str:
    return view(h, host)["self"]


def watch(h: Harness, hosts: list[str], target: str, states: str, timeout: float) -> dict[str, subprocess.Popen]:
    deadline = str(time.time() + timeout)
    return {name: h.popen(name, [sys.executable, "-c", WATCH, target, states, deadline],
                          stdout=subprocess.PIPE, text=True) for name in hosts}


def results(watchers: dict[str, subprocess.Popen]) -> dict[str, dict]:
    out = {}
    for name, p in watchers.items():
        stdout, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"{name} never saw the change"
        out[name] = json.loads(stdout)
    return out


def converged(h: Harness, timeout: float = 30) -> dict[str, dict]:
    names = [x.name for x in h.hosts]
    deadline = time.time() + timeout
    while True:
        views = {n: view(h, n) for n in names}
        alive = {n: sorted(m["id"] for m in v["members"] if m["state"] == "alive") for n, v in views.items()}
        if all(len(a) == len(names) for a in alive.values()) and len({tuple(a) for a in alive.values()}) == 1:
            return views
        assert time.time() < deadline, f"views did not converge: { {n: len(a) for n, a in alive.items()} }"
        time.sleep(0.5)


def test_nine_hosts_converge_to_one_view(mesh):
    views = converged(mesh)
    some = next(iter(views.values()))["members"]
    assert sorted({m["cluster"] for m in some}) == ["c1", "c2", "c3"]
    assert sorted(m["role"] for m in some).count("master") == 3
    # every host has an RTT estimate (its probes' or the Vivaldi coordinates') for every other alive one
    deadline = time.time() + 30
    while True:
        missing = {n: [m["id"][:8] for m in v["members"] if m["id"] != v["self"] and m["state"] == "alive"
                       and m["rtt_estimate_ms"] is None] for n, v in views.items()}
        if not any(missing.values()):
            break
        assert time.time() < deadline, f"no RTT estimate: {missing}"
        time.sleep(0.5)
        views = {n: view(mesh, n) for n in views}


def test_killed_master_is_dead_everywhere_in_time_and_rejoins(mesh):
    """Dead everywhere within 5 s (the lan profile's promise): the better of two kills counts, so a
    moment of machine overload (Lifeguard then stretches timeouts, by design) does not decide it."""
    converged(mesh)
    victim = "c2h1"
    vid = node_id(mesh, victim)
    others = [x.name for x in mesh.hosts if x.name != victim]
    worst: list[float] = []
    for _ in range(2):
        before = {m["id"]: m["incarnation"] for m in view(mesh, "c1h1")["members"]}[vid]
        watchers = watch(mesh, others, vid, "dead", timeout=30)
        time.sleep(0.5)  # the watchers are polling
        killed_at = time.time()
        mesh.kill_daemon(victim)
        try:
            seen = results(watchers)
            worst.append(max(r["t"] - killed_at for r in seen.values()))
            watchers = watch(mesh, others, vid, "alive", timeout=60)
        finally:
            mesh.start_daemon(victim)
        back = results(watchers)
        assert all(r["inc"] > before for r in back.values()), (before, back)
        assert node_id(mesh, victim) == vid, "a restart keeps the host's identity"
        converged(mesh)
        if worst[-1] < DEAD_WITHIN:
            break
    assert min(worst) < DEAD_WITHIN, worst


def test_removed_host_is_dropped_by_every_other_host(mesh):
    converged(mesh)
    victim = "c3h3"
    vid = node_id(mesh, victim)
    others = [x.name for x in mesh.hosts if x.name != victim]
    watchers = watch(mesh, others, vid, "absent,dead,left", timeout=30)
    r = mesh.exec("c1h1", [str(Path(sys.executable).parent / "elton"), "mesh", "remove", vid[:12]], timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == f"removed {vid}", r.stderr
    results(watchers)
    time.sleep(2)  # it stays out: the removed host's own gossip is dropped, not merged back
    for name in others:
        states = {m["id"]: m["state"] for m in view(mesh, name)["members"]}
        assert states.get(vid, "absent") != "alive", name
