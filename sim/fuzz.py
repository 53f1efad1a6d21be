"""Fuzzing: a scenario run under faults drawn from the seed, checked by the invariant checker."""

from __future__ import annotations

import random
import shlex

import blake3

from sim.run import run_system
from sim.scenario import Scenario, load_scenario


def random_faults(sc: Scenario, seed: int) -> list[dict]:
    """Crashes (masters included), churn and partitions, every setting decided by the seed."""
    rng = random.Random(int.from_bytes(blake3.blake3(f"{seed}:fuzz".encode()).digest(length=8), "big"))
    names = sc.cluster_names()
    faults: list[dict] = [{"kind": "churn", "start": rng.uniform(0, sc.duration_s / 4),
                           "end": sc.duration_s * rng.uniform(0.5, 0.9), "rate_per_s": rng.uniform(0.005, 0.1),
                           "down_s": rng.uniform(5, 120), "masters": rng.random() < 0.7}]
    for _ in range(rng.randrange(0, 3)):
        if len(names) < 2:
            break
        cut = rng.randrange(1, len(names))
        shuffled = names[:]
        rng.shuffle(shuffled)
        start = rng.uniform(0, sc.duration_s)
        faults.append({"kind": "partition", "start": start, "end": start + rng.uniform(5, 300),
                       "a": shuffled[:cut], "b": shuffled[cut:]})
    return faults


def fuzz_scenario(name: str, seed: int, sets: tuple[str, ...] = ()) -> Scenario:
    sc = load_scenario(name, sets)
    sc.faults = list(sc.faults) + random_faults(sc, seed)
    return sc


def fuzz_one(name: str, seed: int, sets: tuple[str, ...] = (), system_cls: type | None = None) -> list[str]:
    """The invariant violations of one Elton run of ``name`` under the seed's faults."""
    sc = fuzz_scenario(name, seed, sets)
    return run_system(sc, seed, "elton", system_cls=system_cls).violations


def replay_command(name: str, seed: int, sets: tuple[str, ...] = ()) -> str:
    extra = "".join(f" --set {shlex.quote(s)}" for s in sets)
    return f"elton-sim fuzz --scenario {shlex.quote(name)} --first-seed {seed} --runs 1{extra}"
