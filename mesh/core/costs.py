"""What moving a chunk costs: link classes, prices per GB, RTT and bandwidth estimates (sans-IO).

The expected cost of fetching ``n`` bytes from a holder, in USD::

    cost = price_weight * price_per_gb(link) * n / 1e9
         + time_weight  * (rtt + (queued + n) / bandwidth)

- ``price_per_gb(link)``: the price of the link class between the two hosts (``host`` and
  ``lan`` are inside one cluster; a cluster pair has a class, ``internet`` unless configured),
  or a per-pair price override. GB means 10**9 bytes, as cloud providers bill egress.
- ``rtt``: from the RTT source (in the daemon ``Membership.rtt``: the direct probes' smoothed RTT,
  else the distance of Vivaldi coordinates, ``mesh.core.vivaldi``), else a default per class.
- ``bandwidth``: an EWMA of past transfers from that holder, else from that cluster pair, else
  a default per class (bytes per second).
- ``queued``: bytes this reader already has in flight from the same holder; they share its
  bandwidth, which is what spreads a large file over several holders.
- ``time_weight`` converts a second of waiting into USD (default 0.001: a reader's second is
  worth a tenth of a cent); ``price_weight`` scales the bill (default 1).

With the defaults a holder in the own cluster (price 0, sub-millisecond RTT) wins over any
other cluster unless it is overloaded; between clusters, price dominates for large chunks and
RTT for small ones.

Configuration, as read from the ``[costs]`` table of ``elton.toml``::

    [costs]
    lan = 0.0            # USD per GB by link class (these are the defaults)
    zone = 0.01
    region = 0.02
    continent = 0.05
    internet = 0.09
    default_class = "internet"   # class of a cluster pair not listed below
    time_weight = 0.001          # USD per second of waiting
    price_weight = 1.0
    [costs.pairs.dc1]            # per cluster pair (unordered): a class name or a USD/GB price
    aws-eu = "region"
    laptop = 0.12
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import ConfigError

GB = 1_000_000_000
MAX_PAIRS = 10_000  # configured cluster pairs
MAX_BANDWIDTH_KEYS = 4096  # holders (and cluster pairs) with a bandwidth estimate
MIN_SAMPLE_BYTES = 64 * 1024  # smaller transfers measure latency, not bandwidth


class LinkClass(enum.StrEnum):
    HOST = "host"
    LAN = "lan"
    ZONE = "zone"
    REGION = "region"
    CONTINENT = "continent"
    INTERNET = "internet"


CROSS_CLUSTER = (LinkClass.ZONE, LinkClass.REGION, LinkClass.CONTINENT, LinkClass.INTERNET)
DEFAULT_PRICE = {LinkClass.HOST: 0.0, LinkClass.LAN: 0.0, LinkClass.ZONE: 0.01, LinkClass.REGION: 0.02,
                 LinkClass.CONTINENT: 0.05, LinkClass.INTERNET: 0.09}
DEFAULT_RTT = {LinkClass.HOST: 0.0001, LinkClass.LAN: 0.0005, LinkClass.ZONE: 0.002, LinkClass.REGION: 0.02,
               LinkClass.CONTINENT: 0.08, LinkClass.INTERNET: 0.15}
DEFAULT_BANDWIDTH = {LinkClass.HOST: 2e9, LinkClass.LAN: 1.25e8, LinkClass.ZONE: 6.25e7,
                     LinkClass.REGION: 2.5e7, LinkClass.CONTINENT: 1.25e7, LinkClass.INTERNET: 6.25e6}


@dataclass(frozen=True, order=True)
class Host:
    """A node and the cluster it belongs to."""

    node: str
    cluster: str


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _number(value: Any, what: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
        raise ConfigError(f"[costs] {what} must be a number >= {low}, not {value!r}")
    return float(value)


def _link_class(value: Any, what: str) -> LinkClass:
    try:
        cls = LinkClass(value)
    except ValueError:
        cls = None
    if cls not in CROSS_CLUSTER:
        names = ", ".join(c.value for c in CROSS_CLUSTER)
        raise ConfigError(f"[costs] {what} must be one of {names}, not {value!r}")
    return cls


@dataclass(frozen=True)
class PriceTable:
    """Prices per link class, the class of each cluster pair, per-pair price overrides, weights."""

    prices: Mapping[LinkClass, float] = field(default_factory=lambda: dict(DEFAULT_PRICE))
    default_class: LinkClass = LinkClass.INTERNET
    pair_class: Mapping[tuple[str, str], LinkClass] = field(default_factory=dict)
    pair_price: Mapping[tuple[str, str], float] = field(default_factory=dict)
    time_weight: float = 0.001
    price_weight: float = 1.0

    @classmethod
    def from_config(cls, costs: Mapping[str, Any] | None) -> PriceTable:
        """Parse the ``[costs]`` table (a plain dict as tomllib returns it); ConfigError names a bad entry."""
        costs = dict(costs or {})
        prices = dict(DEFAULT_PRICE)
        for link in LinkClass:
            if link.value in costs:
                prices[link] = _number(costs.pop(link.value), link.value)
        default_class = _link_class(costs.pop("default_class", "internet"), "default_class")
        time_weight = _number(costs.pop("time_weight", 0.001), "time_weight")
        price_weight = _number(costs.pop("price_weight", 1.0), "price_weight")
        pair_class: dict[tuple[str, str], LinkClass] = {}
        pair_price: dict[tuple[str, str], float] = {}
        pairs = costs.pop("pairs", {})
        if not isinstance(pairs, Mapping):
            raise ConfigError("[costs] pairs must be a table")
        for a, inner in pairs.items():
            entries = inner.items() if isinstance(inner, Mapping) else [(None, inner)]
            for b, value in entries:
                if b is None:  # "a/b" = value, for cluster names without "/"
                    a_name, sep, b = str(a).partition("/")
                    if not sep or not a_name or not b:
                        raise ConfigError(f"[costs] pairs: {a!r} must be a table or 'cluster/cluster'")
                else:
                    a_name = str(a)
                key = _pair(a_name, str(b))
                what = f"pairs.{a_name}.{b}"
                if isinstance(value, str):
                    pair_class[key] = _link_class(value, what)
                else:
                    pair_price[key] = _number(value, what)
                if len(pair_class) + len(pair_price) > MAX_PAIRS:
                    raise ConfigError(f"[costs] more than {MAX_PAIRS} cluster pairs")
        if costs:
            raise ConfigError(f"[costs] unknown setting(s) {', '.join(sorted(map(str, costs)))}")
        return cls(prices, default_class, pair_class, pair_price, time_weight, price_weight)

    def link(self, a: Host, b: Host) -> LinkClass:
        if a.node == b.node:
            return LinkClass.HOST
        if a.cluster == b.cluster:
            return LinkClass.LAN
        return self.pair_class.get(_pair(a.cluster, b.cluster), self.default_class)

    def price_per_gb(self, a: Host, b: Host) -> float:
        link = self.link(a, b)
        if link in CROSS_CLUSTER:
            override = self.pair_price.get(_pair(a.cluster, b.cluster))
            if override is not None:
                return override
        return self.prices[link]


def expected_cost(price_per_gb: float, nbytes: int, rtt: float, bandwidth: float, *,
                  time_weight: float, price_weight: float = 1.0, queued: int = 0) -> float:
    """The formula of the module docstring, in USD."""
    return price_weight * price_per_gb * nbytes / GB + time_weight * (rtt + (queued + nbytes) / bandwidth)


class BandwidthEstimator:
    """EWMA of observed transfer rates per holder and per cluster pair (bytes per second), bounded."""

    def __init__(self, alpha: float = 0.3, max_keys: int = MAX_BANDWIDTH_KEYS) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.max_keys = max_keys
        self._rates: OrderedDict[Any, float] = OrderedDict()

    def _mix(self, key: Any, rate: float) -> None:
        old = self._rates.get(key)
        self._rates[key] = rate if old is None else (1 - self.alpha) * old + self.alpha * rate
        self._rates.move_to_end(key)
        while len(self._rates) > self.max_keys:
            self._rates.popitem(last=False)

    def observe(self, local: Host, holder: Host, nbytes: int, seconds: float, rtt: float = 0.0) -> None:
        """``nbytes`` came from ``holder`` in ``seconds`` (request to last byte); ``rtt`` is taken off."""
        if nbytes < MIN_SAMPLE_BYTES or not math.isfinite(seconds) or seconds <= 0:
            return
        rate = nbytes / max(seconds - max(rtt, 0.0), seconds * 0.1)
        self._mix(("node", holder.node), rate)
        self._mix(("pair", _pair(local.cluster, holder.cluster)), rate)

    def forget(self, node: str) -> None:
        self._rates.pop(("node", node), None)

    def estimate(self, local: Host, holder: Host) -> float | None:
        rate = self._rates.get(("node", holder.node))
        if rate is None and local.cluster != holder.cluster:
            rate = self._rates.get(("pair", _pair(local.cluster, holder.cluster)))
        return rate


@dataclass(frozen=True)
class Estimate:
    holder: Host
    link: LinkClass
    price_per_gb: float
    rtt: float
    bandwidth: float
    cost: float  # USD, the formula of the module docstring

    @property
    def cross_cluster(self) -> bool:
        return self.link in CROSS_CLUSTER


RttSource = Callable[[str, str], float | None]


class CostModel:
    """Combines the price table, an RTT source (e.g. ``Coordinates.rtt``) and bandwidth history."""

    def __init__(self, table: PriceTable | None = None, rtt: RttSource | None = None,
                 bandwidth: BandwidthEstimator | None = None) -> None:
        self.table = table or PriceTable()
        self.rtt_source = rtt
        self.bandwidth = bandwidth or BandwidthEstimator()

    def rtt(self, local: Host, holder: Host) -> float:
        link = self.table.link(local, holder)
        if link == LinkClass.HOST:
            return DEFAULT_RTT[link]
        measured = self.rtt_source(local.node, holder.node) if self.rtt_source else None
        return DEFAULT_RTT[link] if measured is None or not math.isfinite(measured) else max(measured, 0.0)

    def estimate(self, local: Host, holder: Host, nbytes: int, queued: int = 0) -> Estimate:
        link = self.table.link(local, holder)
        price = self.table.price_per_gb(local, holder)
        rtt = self.rtt(local, holder)
        bandwidth = self.bandwidth.estimate(local, holder) or DEFAULT_BANDWIDTH[link]
        cost = expected_cost(price, nbytes, rtt, bandwidth, time_weight=self.table.time_weight,
                             price_weight=self.table.price_weight, queued=queued)
        return Estimate(holder, link, price, rtt, bandwidth, cost)

    def observe_transfer(self, local: Host, holder: Host, nbytes: int, seconds: float) -> None:
        self.bandwidth.observe(local, holder, nbytes, seconds, self.rtt(local, holder))
