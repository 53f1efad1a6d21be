"""`scripts/mesh-netns`: up, exec, bytes and down for a mesh of hosts in network namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from tests.harness.netns import DAEMON_CMD, Harness, HarnessError

DEFAULT_DIR = "/tmp/elton-mesh"
_dir_option = click.option("--dir", "dir_", type=click.Path(path_type=Path), default=DEFAULT_DIR,
                           envvar="ELTON_MESH_DIR", show_default=True,
                           help="harness folder: state file and one data dir per host [env ELTON_MESH_DIR]")


def _parse_rates(values: tuple[str, ...]) -> dict[int, str]:
    rates: dict[int, str] = {}
    for v in values:
        cluster, sep, rate = v.partition("=")
        if not sep or not cluster.strip().lstrip("c").isdigit() or not rate:
            raise click.BadParameter(f"{v!r}: expected CLUSTER=RATE, e.g. 2=50mbit", param_hint="--wan-rate-for")
        rates[int(cluster.strip().lstrip("c"))] = rate.strip()
    return rates


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Clusters of hosts in network namespaces joined through one router by WAN links (needs root)."""
    if os.geteuid() != 0:
        raise click.ClickException("network namespaces need root: run as root (e.g. with sudo)")


@cli.command()
@click.option("--clusters", "-k", type=int, default=2, show_default=True, help="number of clusters")
@click.option("--hosts", "-n", type=int, default=2, show_default=True, help="hosts per cluster")
@_dir_option
@click.option("--wan-rate", help="tbf rate of every WAN link, both directions (e.g. 200mbit) [default: none]")
@click.option("--wan-rate-for", multiple=True, metavar="K=RATE", help="rate of cluster K's WAN link (repeatable)")
@click.option("--masters-per-cluster", "-m", type=int, default=1, show_default=True,
              help="the first M hosts of each cluster are masters")
@click.option("--no-daemons", is_flag=True, help="build the network only")
@click.option("--daemon-cmd", default=DAEMON_CMD, show_default=True,
              help="daemon command template; placeholders {venv} {python} {data_dir} {host} {ip} {cluster}"
                   " {cluster_name} {role} {http} {gossip} {join} {join_addr}")
@click.option("--health-timeout", type=float, default=30.0, show_default=True,
              help="seconds to wait for every daemon's /v1/health")
def up(clusters: int, hosts: int, dir_: Path, wan_rate: str | None, wan_rate_for: tuple[str, ...],
       masters_per_cluster: int, no_daemons: bool, daemon_cmd: str, health_timeout: float) -> None:
    """Build the mesh, start a daemon in each host and print the hosts and addresses."""
    harness = Harness(dir_, clusters=clusters, hosts=hosts, wan_rate=wan_rate, wan_rates=_parse_rates(wan_rate_for),
                      masters_per_cluster=masters_per_cluster, daemons=not no_daemons, daemon_cmd=daemon_cmd,
                      health_timeout=health_timeout)
    try:
        harness.up()
    except HarnessError as e:
        if harness.state is not None:
            click.echo(harness.table())
            click.echo(f"\nthe mesh is left as it is for inspection; remove it with: mesh-netns down --dir {dir_}",
                       err=True)
        raise click.ClickException(str(e)) from None
    click.echo(harness.table())


@cli.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_dir_option
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(dir_: Path, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside HOST (a host, "rt" for the router or "c<K>gw" for a cluster gateway)."""
    harness = Harness.load(dir_)
    argv = ["ip", "netns", "exec", harness.netns_of(host), *command]
    sys.exit(subprocess.run(argv).returncode)


@cli.command(name="bytes")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def bytes_(dir_: Path, as_json: bool) -> None:
    """Bytes that crossed each WAN link (cluster side: tx leaves the cluster, rx enters it)."""
    counters = Harness.load(dir_).wan_bytes()
    if as_json:
        click.echo(json.dumps(counters, indent=2))
        return
    click.echo(f"{'LINK':<6} {'RATE':<10} {'TX BYTES (out)':>16} {'RX BYTES (in)':>16}")
    for name, c in counters.items():
        click.echo(f"{name:<6} {c['rate'] or 'unlimited':<10} {c['tx_bytes']:>16} {c['rx_bytes']:>16}")


@cli.command()
@_dir_option
@click.option("--grace", type=float, default=5.0, show_default=True, help="seconds between SIGTERM and SIGKILL")
def down(dir_: Path, grace: float) -> None:
    """Stop every process of the mesh and delete its namespaces (harmless when nothing is up)."""
    removed = Harness(dir_).down(grace=grace)
    click.echo(f"removed {len(removed)} namespaces" if removed else "nothing to remove")


def main() -> None:
    try:
        cli(prog_name="mesh-netns")
    except HarnessError as e:  # a mesh that is missing or not ours, found outside `up`
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
