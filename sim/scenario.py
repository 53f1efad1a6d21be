"""Scenarios: TOML files that name clusters, links, prices, workloads and faults.

``load_scenario(name_or_path, overrides)`` reads a shipped scenario (``sim/scenarios/NAME.toml``)
or a path, applies ``--set key=value`` overrides (dotted keys, values parsed as TOML), and
checks every field, so a typo in a scenario is an error that names the field, not a silent
default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mesh.errors import EltonError


class ScenarioError(EltonError):
    """Invalid scenario."""

    code = "scenario"
    exit_code = 2


SHIPPED_DIR = Path(str(resources.files("sim") / "scenarios"))


def shipped_scenarios() -> dict[str, str]:
    """Name -> one-line description of every shipped scenario."""
    out = {}
    for p in sorted(SHIPPED_DIR.glob("*.toml")):
        with p.open("rb") as f:
            out[p.stem] = str(tomllib.load(f).get("description", "")).strip().splitlines()[0]
    return out


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    hosts: int
    masters: int
    lan_latency_s: float
    lan_bandwidth_bps: float


@dataclass(frozen=True)
class WanSpec:
    a: str
    b: str
    link_class: str
    latency_s: float
    bandwidth_bps: float
    loss: float


@dataclass
class Scenario:
    name: str
    description: str
    duration_s: float
    chunk_size: int
    clusters: list[ClusterSpec]
    links: list[WanSpec]
    prices: dict[str, float]
    sharing: str
    bucket_s: float
    workloads: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    nfs_server: str
    elton: dict[str, Any]
    gossip: dict[str, Any] | None = None  # a membership study (sim.gossip) instead of systems
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def cluster_names(self) -> list[str]:
        return [c.name for c in self.clusters]

    def host_count(self) -> int:
        return sum(c.hosts for c in self.clusters)


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise ScenarioError(f"no such file {name_or_path!r}")
        return p
    shipped = SHIPPED_DIR / f"{name_or_path}.toml"
    if not shipped.exists():
        raise ScenarioError(f"no shipped scenario {name_or_path!r}; try: {', '.join(shipped_scenarios())}")
    return shipped


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise ScenarioError(f"--set {text!r} is not key=value")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ScenarioError(f"--set {text!r} has an empty key segment")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = raw
    for i, seg in enumerate(path[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(seg)]
            except (ValueError, IndexError) as exc:
                raise ScenarioError(f"--set {'.'.join(path)}: no item {seg!r}") from exc
            continue
        if seg not in node:
            node[seg] = {}
        node = node[seg]
        if not isinstance(node, dict | list):
            raise ScenarioError(f"--set {'.'.join(path[: i + 1])} is not a table")
    last = path[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError) as exc:
            raise ScenarioError(f"--set {'.'.join(path)}: no item {last!r}") from exc
    else:
        node[last] = value


def _num(d: dict[str, Any], key: str, default: float | None, where: str, minimum: float = 0.0) -> float:
    v = d.get(key, default)
    if v is None:
        raise ScenarioError(f"{where}.{key} is required")
    if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
        raise ScenarioError(f"{where}.{key} must be a number >= {minimum}, not {v!r}")
    return float(v)


def load_scenario(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    path = _resolve(name_or_path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    for o in overrides:
        apply_override(raw, *parse_override(o))
    return build_scenario(raw, default_name=path.stem)


def build_scenario(raw: dict[str, Any], default_name: str = "scenario") -> Scenario:
    known = {"name", "description", "duration_s", "chunk_size", "clusters", "links", "wan_default",
             "prices", "network", "report", "workload", "faults", "nfs", "elton", "gossip"}
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(f"unknown top-level field(s): {', '.join(sorted(unknown))}")
    clusters = []
    names: set[str] = set()
    for i, c in enumerate(raw.get("clusters", [])):
        where = f"clusters[{i}]"
        name = str(c.get("name", ""))
        if not name or "/" in name or name in names:
            raise ScenarioError(f"{where}.name must be unique, non-empty and without '/'")
        names.add(name)
        hosts = int(_num(c, "hosts", None, where, 1))
        masters = int(_num(c, "masters", 1, where, 1))
        if masters > hosts:
            raise ScenarioError(f"{where}: masters ({masters}) > hosts ({hosts})")
        clusters.append(ClusterSpec(name, hosts, masters, _num(c, "lan_latency_ms", 0.2, where) / 1000,
                                    _num(c, "lan_bandwidth_mbps", 1000, where, 1e-3) * 1e6))
    if not clusters:
        raise ScenarioError("a scenario needs at least one [[clusters]] entry")
    prices = {str(k): _num(raw.get("prices", {}), k, None, "prices") for k in raw.get("prices", {})}
    prices.setdefault("lan", 0.0)
    default = raw.get("wan_default", {})
    links: dict[tuple[str, str], WanSpec] = {}
    for i, link in enumerate(raw.get("links", [])):
        where = f"links[{i}]"
        between = link.get("between", [])
        if len(between) != 2 or any(b not in names for b in between) or between[0] == between[1]:
            raise ScenarioError(f"{where}.between must name two different clusters, not {between!r}")
        cls = str(link.get("class", default.get("class", "wan")))
        if cls == "lan":
            raise ScenarioError(f"{where}.class 'lan' is reserved for links inside a cluster")
        spec = WanSpec(between[0], between[1], cls,
                       _num(link, "latency_ms", default.get("latency_ms", 50), where) / 1000,
                       _num(link, "bandwidth_mbps", default.get("bandwidth_mbps", 100), where, 1e-3) * 1e6,
                       _num(link, "loss", default.get("loss", 0.0), where))
        links[(spec.a, spec.b)] = spec
        links[(spec.b, spec.a)] = WanSpec(spec.b, spec.a, cls, spec.latency_s, spec.bandwidth_bps, spec.loss)
    for a in names:
        for b in names:
            if a != b and (a, b) not in links:
                links[(a, b)] = WanSpec(a, b, str(default.get("class", "wan")),
                                        _num(default, "latency_ms", 50, "wan_default") / 1000,
                                        _num(default, "bandwidth_mbps", 100, "wan_default", 1e-3) * 1e6,
                                        _num(default, "loss", 0.0, "wan_default"))
    for spec in links.values():
        if spec.link_class not in prices:
            raise ScenarioError(f"link class {spec.link_class!r} has no price in [prices]")
    sharing = str(raw.get("network", {}).get("sharing", "fair"))
    if sharing not in ("fair", "fifo"):
        raise ScenarioError(f"network.sharing must be 'fair' or 'fifo', not {sharing!r}")
    nfs_server = str(raw.get("nfs", {}).get("server", f"{clusters[0].name}/0"))
    workloads = list(raw.get("workload", []))
    gossip = raw.get("gossip")
    if gossip is not None and not isinstance(gossip, dict):
        raise ScenarioError("gossip must be a table")
    if not workloads and gossip is None:
        raise ScenarioError("a scenario needs at least one [[workload]] entry (or a [gossip] table)")
    return Scenario(
        name=str(raw.get("name", default_name)),
        description=str(raw.get("description", "")).strip(),
        duration_s=_num(raw, "duration_s", None, "scenario", 1e-3),
        chunk_size=int(_num(raw, "chunk_size", 4 * 1024 * 1024, "scenario", 1)),
        clusters=clusters,
        links=sorted(links.values(), key=lambda s: (s.a, s.b)),
        prices=prices,
        sharing=sharing,
        bucket_s=_num(raw.get("report", {}), "bucket_s", 1.0, "report", 1e-3),
        workloads=workloads,
        faults=list(raw.get("faults", [])),
        nfs_server=nfs_server,
        elton=dict(raw.get("elton", {})),
        gossip=None if gossip is None else dict(gossip),
        raw=raw,
    )
