"""eltond: start, inspect and stop the Elton daemon of this host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from mesh.cli.common import human_bytes as _human
from mesh.cli.common import run
from mesh.client import Client
from mesh.config import Config, load_config
from mesh.errors import DaemonUnreachable, EltonError, NotRunning
from mesh.runtime.datadir import LOG_FILE, DataDir

DETACH_WAIT_SECONDS = 30.0

_start_options = [
    click.option("--data-dir", type=click.Path(path_type=Path), help="[default: ~/.local/share/elton]"),
    click.option("--http", help="HOST:PORT of the application API [default: 127.0.0.1:7420]"),
    click.option("--gossip", help="HOST:PORT facing the other hosts (UDP gossip, TCP transfers)"),
    click.option("--cluster", help="name of this host's cluster [default: default]"),
    click.option("--role", type=click.Choice(["both", "master", "node"]), help="[default: both]"),
    click.option("--join", multiple=True, help="ADDR[,ADDR] of masters to join (repeatable)"),
    click.option("--token", help="join token from `elton mesh token`"),
    click.option("--cache-quota", help="bytes of fetched copies kept: 50GiB, 20% of the disk, unlimited [default: 20%]"),
    click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML config file"),
    click.option("--verbose", "-v", is_flag=True, default=None, help="log more"),
]


def _with_start_options(f: Any) -> Any:
    for opt in reversed(_start_options):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The Elton daemon: one host of the storage mesh."""


@cli.command()
@_with_start_options
@click.option("--detach", is_flag=True, help="run in the background (pid file and log in the data dir)")
def start(data_dir: Path | None, http: str | None, gossip: str | None, cluster: str | None, role: str | None,
          join: tuple[str, ...], token: str | None, cache_quota: str | None, config_file: Path | None,
          verbose: bool | None, detach: bool) -> int:
    """Run eltond (in the foreground unless --detach)."""
    joined = tuple(p for arg in join for p in arg.split(",") if p)
    config = load_config({"data_dir": data_dir, "http": http, "gossip": gossip, "cluster": cluster,
                          "role": role, "join": joined, "token": token, "verbose": verbose,
                          "cache_quota": cache_quota}, config_file)
    if detach:
        return _detach(config)
    from mesh.runtime.daemon import serve
    from mesh.runtime.logs import setup_logging

    setup_logging(config.verbose)
    return serve(config)


def _detach(config: Config) -> int:
    datadir = DataDir(config.data_dir)
    datadir.create()
    pid = datadir.running_pid()
    if pid is not None:
        from mesh.errors import DataDirInUse

        raise DataDirInUse(f"{config.data_dir} (pid {pid})")
    args = [a for a in sys.argv[1:] if a != "--detach"]
    if not args or args[0] != "start":
        args = ["start", *args]
    log_path = config.data_dir / LOG_FILE
    with open(log_path, "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "mesh.cli.eltond", *args], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + DETACH_WAIT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise EltonError(f"eltond exited with code {child.returncode}: {' | '.join(tail)}")
        info = datadir.read_runtime()
        if info and info.get("pid") == child.pid:
            click.echo(f"eltond started: pid {child.pid}, http {info['http']}, node {info['node_id']}")
            return 0
        time.sleep(0.05)
    child.terminate()
    raise EltonError(f"eltond did not become ready within {DETACH_WAIT_SECONDS:.0f} s; see {log_path}")


def _data_dir_of(data_dir: Path | None, config_file: Path | None) -> Path:
    return load_config({"data_dir": data_dir}, config_file).data_dir


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(data_dir: Path | None, config_file: Path | None, as_json: bool) -> int:
    """Print this host's id, role, cluster, addresses and store usage."""
    path = _data_dir_of(data_dir, config_file)
    datadir = DataDir(path)
    if datadir.running_pid() is None:
        raise NotRunning(f"no eltond holds {path}")
    info = datadir.read_runtime()
    if not info:
        raise DaemonUnreachable(f"eltond on {path} is starting or did not write {path}/eltond.json")
    st = Client(info["http_url"], timeout=10).status()
    if as_json:
        import json

        click.echo(json.dumps(st, indent=2))
        return 0
    store = st["store"]
    rows = [
        ("node", st["node_id"]), ("pid", st["pid"]), ("role", st["role"]), ("cluster", st["cluster"]),
        ("http", st["http"]), ("gossip", st["gossip"]), ("data dir", st["data_dir"]),
        ("store", f"{store['keys']} keys, {store['versions']} versions, {store['chunks']} chunks, "
                  f"{_human(store['bytes'])} (disk free {_human(store['disk_free'])})"),
        ("uptime", f"{st['uptime_s']:.0f} s"), ("version", st["version"]),
    ]
    cache = st.get("cache")
    if cache:
        quota = "unlimited" if cache["quota_bytes"] is None else _human(cache["quota_bytes"])
        rows.insert(-2, ("cache", f"{_human(cache['used_bytes'])} of {quota} in {cache['chunks']} fetched chunks, "
                                  f"{cache['evictions']} evicted"))
    for name, value in rows:
        click.echo(f"{name + ':':10} {value}")
    return 0


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait for a clean exit")
def stop(data_dir: Path | None, config_file: Path | None, timeout: float) -> int:
    """Stop the eltond holding the data dir (SIGTERM, waits for in-flight requests)."""
    path = _data_dir_of(data_dir, config_file)
    datadir = DataDir(path)
    pid = datadir.running_pid()
    if pid is None:
        click.echo(f"eltond is not running on {path}", err=True)
        return 0
    if pid <= 0:
        raise EltonError(f"eltond holds {path} but its pid is unknown")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if datadir.running_pid() is None:
            click.echo(f"eltond stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    raise EltonError(f"eltond (pid {pid}) did not stop within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return run(cli, "eltond", argv)


if __name__ == "__main__":
    sys.exit(main())
