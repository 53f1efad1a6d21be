"""Fetch counters of one host and their Prometheus text rendering (``GET /v1/metrics``, ``elton stats``).

Counted where the bytes move, so the numbers are what crossed each link: bytes fetched per link
class and per (holder cluster, reader cluster) pair, chunks read from the local cache versus
fetched, the holder chosen for each chunk and the expected cost the planner gave it, holder
faults by reason, and WAN pulls granted by this host's coalescer (masters). The persistent cache's
gauges (bytes cached, quota) and eviction counters come from the ``ChunkCache`` set as ``cache``.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

RECENT = 64  # chosen holders remembered for ``elton stats``


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


@dataclass
class FetchMetrics:
    bytes_by_link: Counter[str] = field(default_factory=Counter)
    bytes_by_pair: Counter[tuple[str, str]] = field(default_factory=Counter)  # (from cluster, to cluster)
    chunks_by_link: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)  # ok, failed
    lookups: int = 0  # holder lookups at the masters (one per read, then one per NeedHolders round)
    requests: int = 0  # chunk requests sent to holders (one per chunk unless a holder failed)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    cache: Any = None  # the host's ChunkCache (mesh.store.cache): its stats() are reported too

    def chunk_fetched(self, holder: str, holder_cluster: str, my_cluster: str, link: str, nbytes: int,
                      cost: float) -> None:
        self.bytes_by_link[link] += nbytes
        self.bytes_by_pair[(holder_cluster, my_cluster)] += nbytes
        self.chunks_by_link[link] += 1
        self.cost_usd += cost
        self.recent.append({"holder": holder, "cluster": holder_cluster, "link": link, "bytes": nbytes,
                            "cost_usd": cost})

    def snapshot(self, wan_grants: int | None = None) -> dict[str, Any]:
        """A JSON view for ``elton stats``."""
        out: dict[str, Any] = {
            "bytes_by_link": dict(self.bytes_by_link),
            "bytes_by_cluster_pair": {f"{a}->{b}": n for (a, b), n in self.bytes_by_pair.items()},
            "chunks_by_link": dict(self.chunks_by_link),
            "expected_cost_usd": round(self.cost_usd, 9),
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses,
                      **(self.cache.stats() if self.cache is not None else {})},
            "holder_faults": dict(self.faults),
            "reads": dict(self.reads),
            "holder_lookups": self.lookups,
            "chunk_requests": self.requests,
            "recent_chunks": list(self.recent),
        }
        if wan_grants is not None:
            out["wan_grants"] = wan_grants
        return out


def render_prometheus(m: FetchMetrics, wan_grants: int | None = None) -> str:
    """The counters in Prometheus text exposition format 0.0.4."""
    lines: list[str] = []

    def family(name: str, help_text: str, samples: list[tuple[dict[str, str], float]], kind: str = "counter") -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            text = str(int(value)) if float(value).is_integer() else repr(float(value))  # bytes stay exact
            lines.append(f"{name}{{{inner}}} {text}" if inner else f"{name} {text}")

    family("elton_fetch_bytes_total", "Chunk bytes fetched by this host, by link class.",
           [({"link": k}, v) for k, v in sorted(m.bytes_by_link.items())])
    family("elton_fetch_cluster_pair_bytes_total", "Chunk bytes fetched, by holder cluster and reader cluster.",
           [({"from": a, "to": b}, v) for (a, b), v in sorted(m.bytes_by_pair.items())])
    family("elton_fetch_chunks_total", "Chunks fetched by this host, by link class.",
           [({"link": k}, v) for k, v in sorted(m.chunks_by_link.items())])
    family("elton_fetch_expected_cost_usd_total", "Sum of the planner's expected cost of the chosen holders.",
           [({}, m.cost_usd)])
    family("elton_cache_hits_total", "Chunks of reads found in the local store.", [({}, m.cache_hits)])
    family("elton_cache_misses_total", "Chunks of reads fetched from other hosts.", [({}, m.cache_misses)])
    family("elton_holder_faults_total", "Holders that failed to serve a chunk, by reason.",
           [({"reason": k}, v) for k, v in sorted(m.faults.items())])
    family("elton_fetch_reads_total", "Remote reads by outcome.", [({"outcome": k}, v) for k, v in sorted(m.reads.items())])
    family("elton_fetch_holder_lookups_total", "Holder lookups at the masters (one per read, more when holders fail).",
           [({}, m.lookups)])
    family("elton_fetch_requests_total", "Chunk requests sent to holders.", [({}, m.requests)])
    if m.cache is not None:
        st = m.cache.stats()
        family("elton_cache_bytes", "Bytes of fetched copies in the persistent cache.", [({}, st["used_bytes"])], "gauge")
        family("elton_cache_chunks", "Fetched copies in the persistent cache.", [({}, st["chunks"])], "gauge")
        family("elton_cache_quota_bytes", "The cache quota (cache_quota; absent when unlimited).",
               [({}, st["quota_bytes"])] if st["quota_bytes"] is not None else [], "gauge")
        family("elton_cache_pinned_bytes", "Bytes of cached copies in use (not evictable now).",
               [({}, st["pinned_bytes"])], "gauge")
        family("elton_cache_evictions_total", "Cached copies evicted to stay under the quota.", [({}, st["evictions"])])
        family("elton_cache_evicted_bytes_total", "Bytes of cached copies evicted.", [({}, st["evicted_bytes"])])
        family("elton_cache_uncached_total", "Fetched chunks served without being kept (no room in the cache).",
               [({}, st["uncached"])])
        family("elton_cache_spared_last_copies_total",
               "Cached copies kept past their turn: the mesh knew no other live holder of them.",
               [({}, st.get("spared_last_copies", 0))])
    if wan_grants is not None:
        family("elton_wan_pulls_granted_total", "WAN transfers granted by this master's coalescer.",
               [({}, wan_grants)])
    return "\n".join(lines) + "\n"
