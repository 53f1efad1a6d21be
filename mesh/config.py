"""Daemon configuration: defaults < TOML file < ELTON_* environment < command-line flags.

The file (``--config FILE``, ``$ELTON_CONFIG``, or ``<data dir>/elton.toml`` when present) uses the
same names as the flags, with ``_`` for ``-``::

    data_dir = "/var/lib/elton"
    http = "127.0.0.1:7420"
    gossip = "0.0.0.0:7946"
    cluster = "dc1"
    role = "both"            # both | master | node
    join = ["10.0.0.1:7946"]
    token = "..."            # join token, first start only
    verbose = false
    max_object_size = 1099511627776
    gossip_profile = "lan"   # lan | wan | local
    advertise = "203.0.113.7:7946"  # when the gossip address others reach differs from the bind
    http_token = "..."       # required when http is not on loopback
    replicas = 3             # masters holding each key's version counter
    replica_scope = "mesh"   # mesh | cluster
    commit_timeout = 10.0    # seconds before a commit with unreachable replicas fails
    copies = 2               # store hosts holding a version's chunks before it is acknowledged
    copies_scope = "cluster" # cluster | mesh
    cache_quota = "20%"      # fetched copies kept here: bytes, "50GiB", "20%" of the disk, "unlimited"

    [costs]                  # USD per GB by link class (issue 5)
    lan = 0.0

Every scalar is also read from ``ELTON_<NAME>`` (``ELTON_DATA_DIR``, ``ELTON_HTTP``, ``ELTON_JOIN``
as a comma-separated list...).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

ROLES = ("both", "master", "node")
DEFAULT_HTTP = "127.0.0.1:7420"
DEFAULT_GOSSIP = "127.0.0.1:7946"
DEFAULT_CACHE_QUOTA = "20%"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
          "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4}


def parse_size(text: Any, what: str) -> int | float | None:
    """A size: bytes (``1048576``), with a unit (``512MiB``, ``50GiB``, ``1.5TB``; K/M/G/T are binary),
    a percentage of the data dir's filesystem (``20%``, returned as a fraction), or ``unlimited`` (None)."""
    raw = str(text).strip().lower().replace(" ", "").replace("_", "")
    if raw in ("unlimited", "none", "inf"):
        return None
    try:
        if raw.endswith("%"):
            pct = float(raw[:-1])
            if not 0 <= pct <= 100:
                raise ValueError(raw)
            return pct / 100
        digits = raw.rstrip("kmgtib")
        unit = raw[len(digits):]
        value = float(digits) * _UNITS[unit]
        if value < 0 or value != value or value > 1 << 62:
            raise ValueError(raw)
        return int(value)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{what} must be a size (bytes, 50GiB, 20%, unlimited), not {text!r}") from exc


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "elton"


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    http: str = DEFAULT_HTTP
    gossip: str = DEFAULT_GOSSIP
    cluster: str = "default"
    role: str = "both"
    join: tuple[str, ...] = ()
    token: str | None = None
    verbose: bool = False
    max_object_size: int = 1 << 40
    gossip_profile: str = "lan"  # lan | wan | local: membership timings (mesh.core.membership.Config)
    advertise: str | None = None  # the gossip HOST:PORT other hosts reach, when it differs from --gossip
    http_token: str | None = None  # required by the HTTP API when it listens beyond loopback
    replicas: int = 3  # masters that hold each key's version counter (fewer when the mesh has fewer)
    replica_scope: str = "mesh"  # mesh: survive losing a cluster; cluster: fast commits, one site
    commit_timeout: float = 10.0  # a commit whose replica majority is unreachable fails after this
    copies: int = 2  # store hosts that hold a version's chunks before it is acknowledged
    copies_scope: str = "cluster"  # cluster | mesh
    costs: Mapping[str, Any] = field(default_factory=dict)
    cache_quota: str = DEFAULT_CACHE_QUOTA  # chunks fetched from other hosts: see parse_size

    def cache_quota_bytes(self, disk_total: int) -> int | None:
        """The cache quota in bytes for a data dir on a filesystem of ``disk_total`` bytes (None: no limit)."""
        size = parse_size(self.cache_quota, "cache_quota")
        if isinstance(size, float):
            return int(disk_total * size)
        return size

    @property
    def http_addr(self) -> tuple[str, int]:
        return parse_hostport(self.http, "http")

    @property
    def gossip_addr(self) -> tuple[str, int]:
        return parse_hostport(self.gossip, "gossip")

    def validated(self) -> Config:
        if self.role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if not self.cluster or len(self.cluster) > 64:
            raise ConfigError("cluster must be a name of 1 to 64 characters")
        self.http_addr, self.gossip_addr  # noqa: B018 -- parse both now, fail early
        for peer in self.join:
            parse_hostport(peer, "join")
        if self.max_object_size <= 0:
            raise ConfigError("max_object_size must be positive")
        if self.gossip_profile not in ("lan", "wan", "local"):
            raise ConfigError(f"gossip_profile must be lan, wan or local, not {self.gossip_profile!r}")
        if self.replicas < 1 or self.copies < 1:
            raise ConfigError("replicas and copies are at least 1")
        if self.replica_scope not in ("mesh", "cluster") or self.copies_scope not in ("mesh", "cluster"):
            raise ConfigError("replica_scope and copies_scope are mesh or cluster")
        if not 0 < self.commit_timeout <= 3600:
            raise ConfigError("commit_timeout is between 0 and 3600 seconds")
        if self.advertise is not None:
            parse_hostport(self.advertise, "advertise")
        parse_size(self.cache_quota, "cache_quota")
        if not is_loopback(self.http_addr[0]) and not self.http_token:
            raise ConfigError(f"http {self.http} is beyond loopback: set http_token (ELTON_HTTP_TOKEN) to protect it")
        if self.join and is_loopback((self.advertise and parse_hostport(self.advertise, "advertise")[0])
                                     or self.gossip_addr[0]) and not all(
                is_loopback(parse_hostport(p, "join")[0]) for p in self.join):
            raise ConfigError("--join needs --gossip (or advertise) on an address the other hosts can reach")
        return self


def _coerce(name: str, value: Any) -> Any:
    if name == "data_dir":
        return Path(os.path.expanduser(str(value)))
    if name == "join":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(str(v).strip() for v in value)
    if name == "verbose":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if name in ("max_object_size", "replicas", "copies", "commit_timeout"):
        try:
            return float(value) if name == "commit_timeout" else int(value)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number, not {value!r}") from exc
    if name == "costs":
        if not isinstance(value, Mapping):
            raise ConfigError("[costs] must be a table")
        return dict(value)
    return None if value is None else str(value)


def load_config(flags: Mapping[str, Any], config_file: Path | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from the four sources; a flag of None means 'not given'."""
    env = os.environ if env is None else env
    names = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}

    path = config_file or (Path(env["ELTON_CONFIG"]) if env.get("ELTON_CONFIG") else None)
    data_dir_hint = flags.get("data_dir") or env.get("ELTON_DATA_DIR")
    if path is None:
        candidate = Path(os.path.expanduser(str(data_dir_hint))) if data_dir_hint else default_data_dir()
        if (candidate / "elton.toml").is_file():
            path = candidate / "elton.toml"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
        values.update(raw)
    for name in names - {"costs"}:
        key = f"ELTON_{name.upper()}"
        if env.get(key):
            values[name] = env[key]
    for name, value in flags.items():
        if value is not None and value != () and name in names:
            values[name] = value
    return replace(Config(), **{k: _coerce(k, v) for k, v in values.items()}).validated()
