"""A multi-cluster mesh of hosts in Linux network namespaces, for tests and benchmarks.

Topology (K clusters of N hosts, all names prefixed ``elt<id>-`` so runs never collide):

    host c<k>h<h>  (netns elt<id>-c<k>h<h>, eth0 10.213.<k>.<h>/24)
        |  veth
    cluster gateway (netns elt<id>-c<k>gw): bridge br0 10.213.<k>.254/24, forwards
        |  WAN veth wan0 10.214.<k>.1/30  <->  router dev c<k> 10.214.<k>.2/30, tbf both ways
    router (netns elt<id>-rt): joins every cluster

Addresses are used only inside these namespaces: there is no default route, no NAT and nothing
attached to the root namespace. State lives in ``<dir>/mesh-netns.json`` so another process can
``exec``, read ``wan_bytes`` or ``down`` the same mesh; ``down`` works after a crash of ``up``.

    with Harness(tmp, clusters=2, hosts=3, wan_rate="200mbit") as mesh:   # up; down on exit
        mesh.exec("c1h1", ["ping", "-c1", mesh.address("c2h3")])
        mesh.wan_bytes()["c1"]["tx_bytes"]

From a shell: ``scripts/mesh-netns up|exec|bytes|down --dir DIR`` (see ``--help``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

STATE_FILE = "mesh-netns.json"
HOST_NET = "10.213"
WAN_NET = "10.214"
HTTP_ADDR = "127.0.0.1:7420"
GOSSIP_PORT = 7946
HEALTH_PATH = "/v1/health"
MAX_CLUSTERS = 250
MAX_HOSTS = 253
REPO_ROOT = Path(__file__).resolve().parents[2]

# The one place that says how a host's daemon is started. Placeholders: {venv} {python} {data_dir}
# {host} {ip} {cluster} (number) {cluster_name} (c<k>) {role} {http} {gossip} {join} (the whole
# "--join ADDR" option, or nothing) {join_addr} {token} (the whole "--token T" option, or nothing).
# Values are shell-quoted before substitution.
DAEMON_CMD = (
    "{venv}/bin/eltond start --data-dir {data_dir} --http {http} --gossip {gossip}"
    " --cluster {cluster_name} --role {role} {join} {token}"
)


class HarnessError(RuntimeError):
    """The mesh could not be built, started or found; the message names what and where."""


@dataclass
class Host:
    """One host of the mesh: a namespace with one address on its cluster's bridge."""

    name: str
    cluster: int
    index: int
    ip: str
    netns: str
    role: str
    data_dir: str
    pid: int | None = None
    pid_start: int | None = None  # /proc start time, so a reused pid is never killed


@dataclass
class WanLink:
    """The veth pair between a cluster's gateway and the router: what crosses it crosses the WAN."""

    cluster: int
    gw_netns: str
    gw_dev: str
    gw_ip: str
    router_netns: str
    router_dev: str
    router_ip: str
    rate: str | None


@dataclass
class MeshState:
    """Everything ``down`` needs, written before anything is created."""

    id: str
    dir: str
    clusters: int
    hosts_per_cluster: int
    namespaces: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    links: list[WanLink] = field(default_factory=list)
    phase: str = "building"  # building -> network-up -> up

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeshState:
        data = dict(data)
        hosts = [Host(**h) for h in data.pop("hosts", [])]
        links = [WanLink(**link) for link in data.pop("links", [])]
        return cls(**data, hosts=hosts, links=links)


def rate_to_bits(rate: str) -> int:
    """Parse a tc rate ("200mbit", "1gbit", "10mbps" = bytes/s, bare number = bits/s)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(bit|bps)?\s*", rate.lower())
    if not m:
        raise HarnessError(f"bad rate {rate!r}: expected a number with a unit like 200mbit, 1gbit, 10mbps")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    if m.group(3) == "bps":
        value *= 8
    if value <= 0:
        raise HarnessError(f"bad rate {rate!r}: must be positive")
    return int(value)


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise HarnessError(f"`{shlex.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def list_netns() -> list[str]:
    """Names of every named network namespace on this machine."""
    out = _run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    return [ns["name"] for ns in json.loads(out)] if out else []


def _proc_start(pid: int) -> int | None:
    """The start time of a process (clock ticks since boot), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_HEALTH_PROBE = """
import sys, time, urllib.request
url, deadline = sys.argv[1], float(sys.argv[2])
err = "no answer"
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
            err = f"HTTP {r.status}"
    except Exception as e:
        err = str(e)
    time.sleep(0.1)
print(err)
sys.exit(1)
"""


class Harness:
    """Builds, drives and removes one mesh of namespaces; a context manager that always cleans up."""

    def __init__(self, dir: str | Path, clusters: int = 2, hosts: int = 2, wan_rate: str | None = None,
                 wan_rates: dict[int, str] | None = None, masters_per_cluster: int = 1,
                 daemons: bool = True, daemon_cmd: str = DAEMON_CMD, health_timeout: float = 30.0,
                 venv: str | Path | None = None) -> None:
        if not 1 <= clusters <= MAX_CLUSTERS:
            raise HarnessError(f"clusters must be 1..{MAX_CLUSTERS}, got {clusters}")
        if not 1 <= hosts <= MAX_HOSTS:
            raise HarnessError(f"hosts must be 1..{MAX_HOSTS}, got {hosts}")
        if masters_per_cluster < 1:
            raise HarnessError(f"masters-per-cluster must be at least 1, got {masters_per_cluster}")
        for k in wan_rates or {}:
            if not 1 <= k <= clusters:
                raise HarnessError(f"WAN rate given for cluster {k}, which does not exist (1..{clusters})")
        for r in [wan_rate, *(wan_rates or {}).values()]:
            if r is not None:
                rate_to_bits(r)
        self.dir = Path(dir).resolve()
        self.clusters = clusters
        self.hosts_per_cluster = hosts
        self.wan_rate = wan_rate
        self.wan_rates = dict(wan_rates or {})
        self.masters_per_cluster = masters_per_cluster
        self.daemons = daemons
        self.daemon_cmd = daemon_cmd
        self.health_timeout = health_timeout
        self.token: str | None = None  # the join token the seed host gave, once it is up
        self.venv = Path(venv) if venv else (REPO_ROOT / ".venv" if (REPO_ROOT / ".venv").is_dir()
                                             else Path(sys.prefix))
        self.state: MeshState | None = None
        self.id: str | None = None  # kept after down, so callers can check that nothing of it is left
        self._last_hosts: list[Host] = []
        self._children: dict[int, subprocess.Popen[Any]] = {}  # started by this process, reaped by us

    # ---- state ----------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @classmethod
    def load(cls, dir: str | Path) -> Harness:
        """The harness of a mesh that ``up`` built (maybe in another process)."""
        path = Path(dir).resolve() / STATE_FILE
        try:
            state = MeshState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise HarnessError(f"no mesh in {path.parent} (no {STATE_FILE}); run `up` first") from None
        h = cls(path.parent, clusters=state.clusters, hosts=state.hosts_per_cluster, daemons=False)
        h.state, h.id = state, state.id
        return h

    def _save(self) -> None:
        assert self.state is not None
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        os.replace(tmp, self.state_path)

    @property
    def prefix(self) -> str:
        assert self.state is not None
        return f"elt{self.state.id}-"

    @property
    def hosts(self) -> list[Host]:
        """The hosts of the mesh (after ``down``, the ones it had)."""
        return list(self.state.hosts) if self.state else list(self._last_hosts)

    @property
    def links(self) -> list[WanLink]:
        return list(self.state.links) if self.state else []

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise HarnessError(f"no host {name!r}; hosts: {', '.join(h.name for h in self.hosts)}")

    def address(self, name: str) -> str:
        """The IP address of a host on its cluster's bridge."""
        return self.host(name).ip

    def netns_of(self, name: str) -> str:
        """The namespace of a host, the router ("rt") or a cluster gateway ("c<k>gw")."""
        if self.state is None:
            raise HarnessError("the mesh is not up")
        if name in {h.name for h in self.state.hosts}:
            return self.host(name).netns
        ns = self.prefix + name
        if ns in self.state.namespaces:
            return ns
        raise HarnessError(f"no host or namespace {name!r} in this mesh")

    # ---- up -------------------------------------------------------------------------------------
    def up(self) -> None:
        """Build the namespaces, links and routes, then start and health-check the daemons."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            raise HarnessError(f"a mesh is already recorded in {self.state_path}; run `down` first")
        self.id = self._new_id()
        self.state = MeshState(id=self.id, dir=str(self.dir), clusters=self.clusters,
                               hosts_per_cluster=self.hosts_per_cluster)
        self._save()
        self._build_network()
        self.state.phase = "network-up"
        self._save()
        if self.daemons:
            self._start_daemons()
            self._wait_healthy()
        self.state.phase = "up"
        self._save()

    @staticmethod
    def _new_id() -> str:
        taken = list_netns()
        while True:
            i = secrets.token_hex(3)
            if not any(n.startswith(f"elt{i}-") for n in taken):
                return i

    def _add_netns(self, short: str, forward: bool = False) -> str:
        assert self.state is not None
        ns = self.prefix + short
        self.state.namespaces.append(ns)
        self._save()  # recorded before it exists, so a crash right after still cleans it
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # No IPv6 on the links to come (lo keeps it): WAN counters then hold only the traffic under test.
        sysctls = ["net.ipv6.conf.default.disable_ipv6=1"] + (["net.ipv4.ip_forward=1"] if forward else [])
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", *sysctls])
        return ns

    def _build_network(self) -> None:
        assert self.state is not None
        rt = self._add_netns("rt", forward=True)
        for k in range(1, self.clusters + 1):
            gw = self._add_netns(f"c{k}gw", forward=True)
            _run(["ip", "-n", gw, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", gw, "addr", "add", f"{HOST_NET}.{k}.254/24", "dev", "br0"])
            _run(["ip", "-n", gw, "link", "set", "br0", "up"])
            link = WanLink(cluster=k, gw_netns=gw, gw_dev="wan0", gw_ip=f"{WAN_NET}.{k}.1",
                           router_netns=rt, router_dev=f"c{k}", router_ip=f"{WAN_NET}.{k}.2",
                           rate=self.wan_rates.get(k, self.wan_rate))
            _run(["ip", "-n", gw, "link", "add", "wan0", "type", "veth", "peer", "name", link.router_dev,
                  "netns", rt])
            _run(["ip", "-n", gw, "addr", "add", f"{link.gw_ip}/30", "dev", "wan0"])
            _run(["ip", "-n", rt, "addr", "add", f"{link.router_ip}/30", "dev", link.router_dev])
            _run(["ip", "-n", gw, "link", "set", "wan0", "up"])
            _run(["ip", "-n", rt, "link", "set", link.router_dev, "up"])
            _run(["ip", "-n", gw, "route", "add", f"{HOST_NET}.0.0/16", "via", link.router_ip])
            _run(["ip", "-n", rt, "route", "add", f"{HOST_NET}.{k}.0/24", "via", link.gw_ip])
            if link.rate:
                self._limit(gw, "wan0", link.rate)
                self._limit(rt, link.router_dev, link.rate)
            self.state.links.append(link)
            for i in range(1, self.hosts_per_cluster + 1):
                self._add_host(k, i, gw)
            self._save()

    def _add_host(self, k: int, i: int, gw: str) -> None:
        assert self.state is not None
        name = f"c{k}h{i}"
        ns = self._add_netns(name)
        ip = f"{HOST_NET}.{k}.{i}"
        _run(["ip", "-n", gw, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", gw, "link", "set", f"h{i}", "master", "br0", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", f"{HOST_NET}.0.0/16", "via", f"{HOST_NET}.{k}.254"])
        role = self._role(i)
        self.state.hosts.append(Host(name=name, cluster=k, index=i, ip=ip, netns=ns, role=role,
                                     data_dir=str(self.dir / name)))

    def _role(self, index: int) -> str:
        """The first M hosts of a cluster are masters; a cluster of masters only holds data too."""
        if self.hosts_per_cluster <= self.masters_per_cluster:
            return "both"
        return "master" if index <= self.masters_per_cluster else "node"

    @staticmethod
    def _limit(ns: str, dev: str, rate: str) -> None:
        bits = rate_to_bits(rate)
        burst = max(32 * 1024, bits // 8 // 100)  # 10 ms worth of bytes, at least 32 KiB
        _run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
              "burst", str(burst), "latency", "50ms"])

    # ---- daemons --------------------------------------------------------------------------------
    def join_addr(self, host: Host) -> str | None:
        """Whom a host joins: its cluster's first master, and the seed host (c1h1, which created the
        mesh and holds the admin key: only it admits a new host); the seed joins nobody."""
        seed = f"{HOST_NET}.1.1:{GOSSIP_PORT}"
        if host.cluster == 1 and host.index == 1:
            return None
        if host.index == 1 or host.cluster == 1:
            return seed
        return f"{HOST_NET}.{host.cluster}.1:{GOSSIP_PORT},{seed}"

    def daemon_argv(self, host: Host) -> list[str]:
        """The daemon command line of a host, from the template."""
        join = self.join_addr(host)
        values = {"venv": str(self.venv), "python": sys.executable, "data_dir": host.data_dir,
                  "host": host.name, "ip": host.ip, "cluster": str(host.cluster),
                  "cluster_name": f"c{host.cluster}", "role": host.role, "http": HTTP_ADDR,
                  "gossip": f"{host.ip}:{GOSSIP_PORT}", "join_addr": join or ""}
        quoted = {k: shlex.quote(v) for k, v in values.items()}
        quoted["join"] = f"--join {shlex.quote(join)}" if join else ""
        quoted["token"] = f"--token {shlex.quote(self.token)}" if join and self.token else ""
        try:
            return shlex.split(self.daemon_cmd.format(**quoted))
        except (KeyError, IndexError, ValueError) as e:
            raise HarnessError(f"bad daemon command template {self.daemon_cmd!r}: {e}") from None

    def _start_daemons(self) -> None:
        """Start the seed host, take a join token from it, then start every other host with it."""
        assert self.state is not None
        seed, rest = self.state.hosts[0], self.state.hosts[1:]
        self._spawn_daemons([seed])
        self._wait_healthy([seed])
        if rest:
            self.token = self._join_token(seed)
            self._spawn_daemons(rest)

    def _join_token(self, seed: Host) -> str | None:
        """A join token from the seed's eltond (None when the daemon is a stand-in without one)."""
        r = self.exec(seed.name, [str(self.venv / "bin" / "elton"), "--host", f"http://{HTTP_ADDR}",
                                  "mesh", "token"], timeout=30)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None

    def _spawn_daemons(self, hosts: list[Host]) -> None:
        assert self.state is not None
        for host in hosts:
            Path(host.data_dir).mkdir(parents=True, exist_ok=True)
            argv = self.daemon_argv(host)
            with open(Path(host.data_dir) / "eltond.log", "ab") as log:
                proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=host.data_dir,
                                        start_new_session=True)
            self._children[proc.pid] = proc
            host.pid, host.pid_start = proc.pid, _proc_start(proc.pid)
            self._save()

    def _wait_healthy(self, hosts: list[Host] | None = None) -> None:
        """Wait until every daemon answers its health URL inside its namespace, or say who did not."""
        assert self.state is not None
        hosts = self.state.hosts if hosts is None else hosts
        deadline = time.time() + self.health_timeout
        url = f"http://{HTTP_ADDR}{HEALTH_PATH}"
        probes = {h.name: subprocess.Popen(["ip", "netns", "exec", h.netns, sys.executable, "-c", _HEALTH_PROBE,
                                            url, str(deadline)], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
                  for h in hosts}
        failures: dict[str, str] = {}
        for h in hosts:
            probe = probes[h.name]
            while probe.poll() is None:
                code = self._exit_code(h)
                if code is not None:
                    probe.kill()
                    failures[h.name] = f"daemon exited with code {code}"
                    break
                time.sleep(0.05)
            out = (probe.communicate()[0] or "").strip()
            if h.name not in failures and probe.returncode != 0:
                failures[h.name] = f"no healthy answer at {url} within {self.health_timeout:g}s ({out})"
        if failures:
            lines = [f"  {name}: {why}; log {Path(self.host(name).data_dir) / 'eltond.log'}"
                     for name, why in failures.items()]
            raise HarnessError(f"{len(failures)} of {len(self.state.hosts)} daemons not healthy:\n"
                               + "\n".join(lines))

    def _exit_code(self, h: Host) -> int | str | None:
        """The exit code of a host's daemon, "?" if it is gone but not our child, None while it runs."""
        if h.pid is None:
            return None
        if h.pid in self._children:
            return self._children[h.pid].poll()
        return "?" if _proc_start(h.pid) != h.pid_start else None

    # ---- partitions -----------------------------------------------------------------------------
    def cut_wan(self, cluster: int) -> None:
        """Cut cluster K off the WAN (its link to the router goes down on both ends)."""
        link = self._link(cluster)
        _run(["ip", "-n", link.gw_netns, "link", "set", link.gw_dev, "down"])
        _run(["ip", "-n", link.router_netns, "link", "set", link.router_dev, "down"])

    def restore_wan(self, cluster: int) -> None:
        """Bring cluster K's WAN link back (addresses and routes come back with the link)."""
        link = self._link(cluster)
        _run(["ip", "-n", link.gw_netns, "link", "set", link.gw_dev, "up"])
        _run(["ip", "-n", link.router_netns, "link", "set", link.router_dev, "up"])
        self._restore_routes(link)

    @staticmethod
    def _restore_routes(link: WanLink) -> None:
        """A link going down takes its routes along; put them back (replace: idempotent)."""
        _run(["ip", "-n", link.gw_netns, "route", "replace", f"{HOST_NET}.0.0/16", "via", link.router_ip])
        _run(["ip", "-n", link.router_netns, "route", "replace", f"{HOST_NET}.{link.cluster}.0/24", "via",
              link.gw_ip])

    def _link(self, cluster: int) -> WanLink:
        for link in self.links:
            if link.cluster == cluster:
                return link
        raise HarnessError(f"no WAN link for cluster {cluster}")

    # ---- one host's daemon -----------------------------------------------------------------------
    def kill_daemon(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a host's daemon (SIGKILL: a crash) and wait until it is gone."""
        host = self.host(name)
        if host.pid is None:
            raise HarnessError(f"{name} has no daemon")
        _signal(host.pid, sig)
        child = self._children.pop(host.pid, None)
        if child is not None:
            child.wait(30)
        host.pid, host.pid_start = None, None
        self._save()

    def start_daemon(self, name: str) -> None:
        """Start a host's daemon again (same data dir and command line) and wait for its health."""
        host = self.host(name)
        if host.pid is not None and self._exit_code(host) is None:
            raise HarnessError(f"{name}'s daemon is still running (pid {host.pid})")
        self._spawn_daemons([host])
        self._wait_healthy([host])

    # ---- use ------------------------------------------------------------------------------------
    def exec(self, name: str, argv: list[str], check: bool = False, capture: bool = True,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host (or "rt", "c<k>gw") and wait for it."""
        return subprocess.run(["ip", "netns", "exec", self.netns_of(name), *argv], check=check,
                              capture_output=capture, text=True, timeout=timeout)

    def popen(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside a host in the background; ``down`` kills it if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns_of(name), *argv], **kwargs)
        self._children[proc.pid] = proc
        return proc

    def wan_bytes(self) -> dict[str, dict[str, int | str | None]]:
        """Counters of each WAN link, seen from the cluster side: tx leaves the cluster, rx enters it."""
        out: dict[str, dict[str, int | str | None]] = {}
        for link in self.links:
            raw = _run(["ip", "-n", link.gw_netns, "-j", "-s", "link", "show", "dev", link.gw_dev]).stdout
            stats = json.loads(raw)[0]["stats64"]
            out[f"c{link.cluster}"] = {"link": f"c{link.cluster}gw:{link.gw_dev}<->rt:{link.router_dev}",
                                       "rate": link.rate, "tx_bytes": stats["tx"]["bytes"],
                                       "rx_bytes": stats["rx"]["bytes"], "tx_packets": stats["tx"]["packets"],
                                       "rx_packets": stats["rx"]["packets"]}
        return out

    def table(self) -> str:
        """A plain-text table of hosts, addresses, roles and pids."""
        rows = [("HOST", "NAMESPACE", "ADDRESS", "ROLE", "PID", "DATA DIR")]
        rows += [(h.name, h.netns, h.ip, h.role, str(h.pid or "-"), h.data_dir) for h in self.hosts]
        rows += [(f"wan c{lk.cluster}", lk.gw_netns, f"{lk.gw_ip}<->{lk.router_ip}", lk.rate or "unlimited",
                  "-", "-") for lk in self.links]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    # ---- down -----------------------------------------------------------------------------------
    def down(self, grace: float = 5.0) -> list[str]:
        """Stop every process in the mesh, delete its namespaces, forget it; idempotent. Returns removed ns."""
        if self.state is None:
            if not self.state_path.exists():
                return []
            self.state = Harness.load(self.dir).state
        assert self.state is not None
        self.id = self.state.id
        prefix = self.prefix
        existing = set(list_netns())
        ours = [ns for ns in existing if ns.startswith(prefix)]
        ours += [ns for ns in self.state.namespaces if ns in existing and ns not in ours]
        victims = self._processes(ours)
        for pid in victims:
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and any(self._alive(p, s) for p, s in victims.items()):
            time.sleep(0.05)
        for pid, start in victims.items():
            if self._alive(pid, start):
                _signal(pid, signal.SIGKILL)
        for proc in self._children.values():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._children.clear()
        for ns in ours:
            _run(["ip", "netns", "del", ns], check=False)
        left = [ns for ns in list_netns() if ns.startswith(prefix)]
        if left:
            raise HarnessError(f"could not delete namespaces: {', '.join(left)}")
        self.state_path.unlink(missing_ok=True)
        self._last_hosts, self.state = self.state.hosts, None
        return sorted(ours)

    def _processes(self, namespaces: list[str]) -> dict[int, int | None]:
        """Pids to stop: everything inside our namespaces, plus recorded daemons that are still ours."""
        assert self.state is not None
        found: dict[int, int | None] = {}
        for ns in namespaces:
            for line in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
                found[int(line)] = _proc_start(int(line))
        for h in self.state.hosts:
            if h.pid and h.pid_start is not None and _proc_start(h.pid) == h.pid_start:
                found[h.pid] = h.pid_start
        found.pop(os.getpid(), None)
        return found

    def _alive(self, pid: int, start: int | None) -> bool:
        if pid in self._children:
            return self._children[pid].poll() is None
        now = _proc_start(pid)
        if now is None or (start is not None and now != start):
            return False
        try:  # a zombie has finished
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    # ---- context manager ------------------------------------------------------------------------
    def __enter__(self) -> Harness:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()
