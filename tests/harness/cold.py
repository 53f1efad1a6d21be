"""Which host of a harness mesh would read a file cold: benchmarks use it so that a "fetch" is a
fetch, not a local read (``copies = 2`` puts every commit's chunks on a second host of the
writer's cluster, and a reader that is that host reads its own disk)."""

from __future__ import annotations

import json
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
