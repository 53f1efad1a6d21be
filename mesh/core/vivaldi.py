"""Vivaldi network coordinates with height, so the RTT of any pair is estimated without probing it.

After Dabek et al., "Vivaldi: a decentralized network coordinate system" (SIGCOMM 2004). Each
host keeps a point in a small Euclidean space plus a *height* (the access-link delay every path
from that host pays) and an error estimate. The estimated RTT between two hosts is

    rtt(a, b) = |a.vec - b.vec| + a.height + b.height          (seconds)

Each measured RTT to a peer whose coordinate we know moves our coordinate a step along the
spring between the two, weighted by how sure we are relative to the peer (``error``). The
membership probes supply the samples: the runtime calls ``Coordinates.observe`` with the probe's
RTT and the coordinate the peer gossiped along with its ack.

Sans-IO: no clock; randomness (only to separate two coincident points) comes from the
``random.Random`` passed in. A coordinate from the wire is validated in ``Coordinate.from_wire``.

On the wire a coordinate is one msgpack bin of little-endian float32: height, error, then the
vector (42 bytes for 8 dimensions, against 92 as a list of float64; float32 keeps 7 digits, far
finer than any RTT sample).
"""

from __future__ import annotations

import math
import random
import statistics
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from mesh.errors import ProtocolError

ZERO = 1.0e-6  # below this a distance is treated as zero (seconds)
MAX_COORDINATE = 1.0e4  # no real component or height is this large; a peer that says so is lying
MAX_RTT_SAMPLE = 60.0  # a longer "round trip" is a stall, not a distance
MAX_DIMENSIONS = 32  # a coordinate from the wire has at most this many components


@dataclass(frozen=True)
class VivaldiConfig:
    dimensions: int = 8
    error_max: float = 1.5  # the error of a fresh coordinate, and the cap
    ce: float = 0.25  # how far one sample moves the coordinate (times relative weight)
    cc: float = 0.25  # how fast the error estimate follows the observed wrongness
    height_min: float = 1.0e-5  # seconds
    filter_samples: int = 3  # median of the last N samples per peer damps outliers
    max_peers: int = 4096  # bound on remembered peer coordinates and sample windows


@dataclass(frozen=True)
class Coordinate:
    vec: tuple[float, ...]
    height: float
    error: float

    @classmethod
    def origin(cls, config: VivaldiConfig) -> Coordinate:
        return cls((0.0,) * config.dimensions, config.height_min, config.error_max)

    def __post_init__(self) -> None:
        values = (*self.vec, self.height, self.error)
        if not all(isinstance(v, float | int) and not isinstance(v, bool) for v in values):
            raise ValueError("coordinate components must be numbers")
        if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in values):
            raise ValueError("coordinate components must be finite and bounded")
        if self.height < 0 or self.error < 0:
            raise ValueError("height and error must not be negative")

    def distance_to(self, other: Coordinate) -> float:
        """The estimated round-trip time to ``other``, seconds."""
        if len(self.vec) != len(other.vec):
            raise ValueError("coordinates of different dimensions")
        return math.dist(self.vec, other.vec) + self.height + other.height

    def to_wire(self) -> bytes:
        return struct.pack(f"<{2 + len(self.vec)}f", self.height, self.error, *self.vec)

    @classmethod
    def from_wire(cls, obj: Any, config: VivaldiConfig | None = None) -> Coordinate:
        """Strict: bytes holding float32 height, error and ``config.dimensions`` components (any count
        from 1 to ``MAX_DIMENSIONS`` without a config), every value finite and within
        ``MAX_COORDINATE``, height and error not negative."""
        if not isinstance(obj, bytes) or len(obj) % 4:
            raise ProtocolError("malformed_coordinate", "a coordinate is bytes of float32 values")
        dims = len(obj) // 4 - 2
        if not (dims == config.dimensions if config is not None else 0 < dims <= MAX_DIMENSIONS):
            raise ProtocolError("malformed_coordinate", f"{dims} components")
        height, error, *vec = struct.unpack(f"<{dims + 2}f", obj)
        try:
            return cls(tuple(vec), height, error)
        except ValueError as exc:
            raise ProtocolError("malformed_coordinate", str(exc)) from exc


def update(local: Coordinate, remote: Coordinate, rtt: float, config: VivaldiConfig,
           rng: random.Random) -> Coordinate:
    """Our coordinate after measuring ``rtt`` seconds to the host at ``remote``."""
    if not (math.isfinite(rtt) and 0 <= rtt <= MAX_RTT_SAMPLE):
        raise ValueError(f"rtt sample {rtt!r} out of range")
    rtt = max(rtt, ZERO)
    dist = local.distance_to(remote)
    wrongness = abs(dist - rtt) / rtt
    weight = local.error / max(local.error + remote.error, ZERO)
    error = min(config.cc * weight * wrongness + local.error * (1 - config.cc * weight), config.error_max)
    force = config.ce * weight * (rtt - dist)  # > 0 pushes us away from the remote, < 0 pulls

    diff = [a - b for a, b in zip(local.vec, remote.vec, strict=True)]
    mag = math.hypot(*diff)
    if mag < ZERO:  # coincident points: pick a random direction so they can separate
        diff = [rng.uniform(-1.0, 1.0) for _ in diff]
        mag = math.hypot(*diff) or 1.0
    vec = tuple(a + force * d / mag for a, d in zip(local.vec, diff, strict=True))
    height = local.height + force * (local.height + remote.height) / max(dist, ZERO)
    height = max(height, config.height_min)
    clamp = MAX_COORDINATE / 2
    return Coordinate(tuple(min(max(v, -clamp), clamp) for v in vec), min(height, clamp), error)


class Coordinates:
    """This host's coordinate and the last coordinate gossiped by each peer (bounded, LRU)."""

    def __init__(self, config: VivaldiConfig | None = None, local: Coordinate | None = None) -> None:
        self.config = config or VivaldiConfig()
        self.local = local or Coordinate.origin(self.config)
        self._peers: OrderedDict[str, Coordinate] = OrderedDict()
        self._samples: OrderedDict[str, deque[float]] = OrderedDict()

    def learn(self, node: str, coordinate: Coordinate) -> None:
        """Remember a peer's coordinate (from gossip) without a new RTT sample."""
        self._peers[node] = coordinate
        self._peers.move_to_end(node)
        while len(self._peers) > self.config.max_peers:
            self._peers.popitem(last=False)

    def observe(self, node: str, coordinate: Coordinate, rtt: float, rng: random.Random) -> Coordinate:
        """A probe to ``node`` took ``rtt`` seconds; move our coordinate. Returns the new one."""
        window = self._samples.get(node)
        if window is None:
            window = self._samples[node] = deque(maxlen=self.config.filter_samples)
        self._samples.move_to_end(node)
        while len(self._samples) > self.config.max_peers:
            self._samples.popitem(last=False)
        window.append(rtt)
        self.learn(node, coordinate)
        self.local = update(self.local, coordinate, statistics.median(window), self.config, rng)
        return self.local

    def forget(self, node: str) -> None:
        self._peers.pop(node, None)
        self._samples.pop(node, None)

    def get(self, node: str) -> Coordinate | None:
        return self._peers.get(node)

    def rtt(self, a: str, b: str, me: str | None = None) -> float | None:
        """Estimated RTT between two hosts by id (``me`` names the local host), or None if unknown."""
        ca = self.local if a == me else self._peers.get(a)
        cb = self.local if b == me else self._peers.get(b)
        if ca is None or cb is None:
            return None
        return ca.distance_to(cb)
