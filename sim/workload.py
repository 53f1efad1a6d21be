"""Workloads: the scenario's [[workload]] tables turned into one time-ordered list of operations.

The list is computed once from the seed and given unchanged to every system, so Elton and the
baselines serve exactly the same writes, edits and reads.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from mesh.core.manifest import ChunkRef
from sim.content import edited_chunks, file_chunks
from sim.engine import Engine
from sim.scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class Op:
    at: float
    seq: int
    host: str
    op: str  # "write" (whole file), "edit" (part of a file) or "read" (latest version)
    key: str
    chunks: tuple[ChunkRef, ...] = ()  # the content after a write or edit
    changed_bytes: int = 0  # bytes a write or edit changed (the whole file for a write)

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)


def check_host(sc: Scenario, ref: str, where: str) -> str:
    cluster, _, idx = ref.partition("/")
    spec = next((c for c in sc.clusters if c.name == cluster), None)
    if spec is None or not idx.isdigit() or int(idx) >= spec.hosts:
        raise ScenarioError(f"{where}: no host {ref!r} (hosts are 'cluster/index')")
    return ref


def _readers(sc: Scenario, cluster: str, count: int, where: str) -> list[str]:
    spec = next((c for c in sc.clusters if c.name == cluster), None)
    if spec is None:
        raise ScenarioError(f"{where}: no cluster {cluster!r}")
    # readers are the store nodes first (hosts after the masters), then the masters
    order = list(range(spec.masters, spec.hosts)) + list(range(spec.masters))
    return [f"{cluster}/{i}" for i in order[: min(count, spec.hosts)]]


def build_ops(sc: Scenario, engine: Engine) -> list[Op]:
    """All operations of the scenario, in time order, with the content of every write and edit."""
    rng = engine.rng("workload")
    raw: list[tuple[float, str, str, str, dict[str, Any]]] = []  # (at, host, op, key, params)
    for i, w in enumerate(sc.workloads):
        where = f"workload[{i}]"
        kind = w.get("kind")
        if kind == "ops":
            for j, o in enumerate(w.get("ops", [])):
                op = o.get("op")
                if op not in ("write", "edit", "read"):
                    raise ScenarioError(f"{where}.ops[{j}].op must be write, edit or read, not {op!r}")
                raw.append((float(o["at"]), check_host(sc, str(o["host"]), where), op, str(o["key"]), o))
        elif kind == "rollout":
            writer = check_host(sc, str(w["writer"]), where)
            layers = int(w.get("layers", 1))
            size = int(w["size"])
            for k in range(layers):
                raw.append((float(w.get("at", 0.0)), writer, "write", f"{w.get('key', 'image')}/layer{k}",
                            {"size": size // layers}))
            start, spread = float(w["read_start"]), float(w.get("read_spread_s", 0.0))
            for cluster in w.get("clusters", [c.name for c in sc.clusters]):
                for host in _readers(sc, cluster, int(w.get("readers_per_cluster", 1)), where):
                    t = start + rng.uniform(0.0, spread)
                    for k in range(layers):
                        raw.append((t, host, "read", f"{w.get('key', 'image')}/layer{k}", {}))
        elif kind == "zipf":
            objects, size = int(w["objects"]), int(w["size"])
            origin = str(w["origin"])
            writers = _readers(sc, origin, 10**9, where)
            for k in range(objects):
                raw.append((float(w.get("at", 0.0)) + rng.uniform(0, float(w.get("write_spread_s", 0.0))),
                            writers[k % len(writers)], "write", f"obj/{k}", {"size": size}))
            s = float(w.get("zipf_s", 1.0))
            cum = []
            total = 0.0
            for r in range(1, objects + 1):
                total += 1.0 / r**s
                cum.append(total)
            clusters = list(w.get("clusters", [c.name for c in sc.clusters]))
            pools = {c: _readers(sc, c, int(w.get("readers_per_cluster", 10**9)), where) for c in clusters}
            lo, hi = float(w["read_start"]), float(w.get("read_end", sc.duration_s))
            for _ in range(int(w["reads"])):
                obj = bisect.bisect_left(cum, rng.random() * total)
                cluster = clusters[rng.randrange(len(clusters))]
                host = pools[cluster][rng.randrange(len(pools[cluster]))]
                raw.append((rng.uniform(lo, hi), host, "read", f"obj/{obj}", {}))
        elif kind == "edits":
            writer = check_host(sc, str(w["writer"]), where)
            reader = check_host(sc, str(w["reader"]), where)
            key, size = str(w.get("key", "big")), int(w["size"])
            at, interval = float(w.get("at", 0.0)), float(w["interval_s"])
            raw.append((at, writer, "write", key, {"size": size}))
            raw.append((at + float(w.get("read_delay_s", 1.0)), reader, "read", key, {}))
            for k in range(1, int(w["edits"]) + 1):
                t = at + k * interval
                raw.append((t, writer, "edit", key, {"offset": rng.randrange(size),
                                                     "length": int(w.get("edit_bytes", 4096))}))
                raw.append((t + float(w.get("read_delay_s", 1.0)), reader, "read", key, {}))
        else:
            raise ScenarioError(f"{where}.kind must be ops, rollout, zipf or edits, not {kind!r}")
    raw.sort(key=lambda r: r[0])  # stable: same-time operations keep their order
    ops: list[Op] = []
    current: dict[str, tuple[ChunkRef, ...]] = {}
    for seq, (at, host, op, key, p) in enumerate(raw):
        if op == "write":
            chunks = file_chunks(key, seq, int(p["size"]), sc.chunk_size)
            current[key] = chunks
            ops.append(Op(at, seq, host, op, key, chunks, sum(c.size for c in chunks)))
        elif op == "edit":
            if key not in current:
                raise ScenarioError(f"an edit of {key!r} at {at}s comes before any write of it")
            chunks, changed = edited_chunks(current[key], key, seq, int(p.get("offset", 0)),
                                            int(p.get("length", 4096)), sc.chunk_size)
            current[key] = chunks
            ops.append(Op(at, seq, host, op, key, chunks, changed))
        else:
            ops.append(Op(at, seq, host, op, key))
    return ops
