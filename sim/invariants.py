"""The invariant checker: called by the systems as events happen, it records every violation.

- a ``(key, version)`` is issued at most once, with one content;
- a version acknowledged to a writer is not lost: a read that starts after the ack never sees
  an older version of that key;
- a reader is given only bytes that match the hashes of the version it asked for;
- a chunk crosses the WAN into a cluster only if no live holder there has it and no fetch of it
  into that cluster is already under way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.core.manifest import ChunkRef


@dataclass
class InvariantChecker:
    violations: list[str] = field(default_factory=list)
    issued: dict[tuple[str, int], str] = field(default_factory=dict)
    content: dict[tuple[str, int], tuple[ChunkRef, ...]] = field(default_factory=dict)
    acked: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    max_violations: int = 100

    def _fail(self, now: float, text: str) -> None:
        if len(self.violations) < self.max_violations:
            self.violations.append(f"t={now:.6f}s {text}")

    def on_issue(self, now: float, key: str, version: int, content_hash: str,
                 chunks: tuple[ChunkRef, ...]) -> None:
        prior = self.issued.get((key, version))
        if prior is not None and prior != content_hash:
            self._fail(now, f"({key!r}, {version}) issued twice with different content")
            return
        self.issued[(key, version)] = content_hash
        self.content[(key, version)] = chunks

    def on_ack(self, now: float, key: str, version: int) -> None:
        self.acked.setdefault(key, []).append((now, version))

    def on_read(self, now: float, started: float, key: str, version: int,
                delivered: tuple[ChunkRef, ...], fresh_required: bool = True) -> None:
        expected = self.content.get((key, version))
        if expected is None:
            self._fail(now, f"read of ({key!r}, {version}) which was never issued")
        elif delivered != expected:
            self._fail(now, f"read of ({key!r}, {version}) was given chunks that do not match its hashes")
        if not fresh_required:
            return
        newest_acked = max((v for t, v in self.acked.get(key, ()) if t <= started), default=0)
        if version < newest_acked:
            self._fail(now, f"read of {key!r} saw version {version} after version {newest_acked} was acknowledged")

    def on_wan_fetch(self, now: float, chunk: str, cluster: str, live_holders: int, in_flight: int) -> None:
        if live_holders or in_flight:
            self._fail(now, f"chunk {chunk[:12]} crossed the WAN into {cluster} again "
                            f"({live_holders} live holders, {in_flight} fetches under way)")
