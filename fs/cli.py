"""The ``eltonfs`` command: mount a volume, see and commit local changes, follow other hosts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fs.docker_plugin import docker_plugin
from fs.mount import Mount, control_path, default_cache_dir, request
from fs.store import Store
from fs.volume import init_volume
from mesh.client import Client
from mesh.errors import EltonError

MOUNT_TIMEOUT = 60.0
host_option = click.option("--host", default=None, help="eltond URL (default $ELTON_HOST or http://127.0.0.1:7420)")


def _fail(message: str, lines: list[str] | None = None) -> None:
    click.echo(f"eltonfs: {message}", err=True)
    for line in lines or []:
        click.echo(f"  {line}", err=True)
    sys.exit(1)


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except EltonError as exc:
        _fail(exc.message)


def _ask(directory: str, req: dict[str, Any]) -> dict[str, Any]:
    reply = _run(lambda: request(directory, req))
    if not reply.get("ok"):
        _fail(reply.get("error", "failed"), [f"conflict: {p}" for p in reply.get("conflicts", [])])
    return reply


def _print_changes(changes: list[list[str]]) -> None:
    for code, path in changes:
        click.echo(f"{code} {path}")


@click.group()
def cli() -> None:
    """eltonfs: a directory tree shared between hosts through commits."""


@cli.command()
@click.argument("volume")
@host_option
def init(volume: str, host: str | None) -> None:
    """Create VOLUME with an empty tree as version 1."""
    client = Client(host)
    m = _run(lambda: init_volume(client, volume, Store(client, default_cache_dir())))
    click.echo(f"{volume}@{m['version']}")


@cli.command()
@click.argument("spec", metavar="VOLUME[@N]")
@click.argument("directory", type=click.Path(file_okay=False))
@host_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted.")
def mount(spec: str, directory: str, host: str | None, cache_dir: Path | None, foreground: bool) -> None:
    """Mount VOLUME (at version N, else the latest) on DIRECTORY; returns once it is ready."""
    volume, _, v = spec.partition("@")
    version = int(v) if v else None
    cache = (cache_dir or default_cache_dir()).resolve()
    if not os.path.isdir(directory):
        _fail(f"{directory} is not a directory")
    if os.path.ismount(directory):
        _fail(f"{directory} is already a mount point")
    if foreground:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s eltonfs %(levelname)s %(message)s")
        ready = os.environ.get("ELTONFS_READY_FILE")
        m = _run(lambda: Mount(volume, version, Path(directory), host, cache))
        m.run(Path(ready) if ready else None)
        return
    cache.mkdir(parents=True, exist_ok=True)
    ready = cache / f".ready-{os.getpid()}-{time.monotonic_ns()}"
    log_path = cache / "mount.log"
    args = [sys.executable, "-m", "fs.cli", "mount", spec, directory, "--cache-dir", str(cache), "--foreground"]
    if host:
        args += ["--host", host]
    with open(log_path, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                env={**os.environ, "ELTONFS_READY_FILE": str(ready)})
    deadline = time.monotonic() + MOUNT_TIMEOUT
    try:
        while not ready.exists():
            if proc.poll() is not None:
                with open(log_path, "rb") as f:
                    f.seek(start)
                    _fail(f"mount failed:\n{f.read().decode(errors='replace').strip()}")
            if time.monotonic() > deadline:
                proc.terminate()
                _fail(f"mount did not become ready in {MOUNT_TIMEOUT:.0f} s (see {log_path})")
            time.sleep(0.02)
    finally:
        ready.unlink(missing_ok=True)
    click.echo(f"mounted {volume} on {directory} (pid {proc.pid})")


@cli.command()
@click.argument("directory")
def status(directory: str) -> None:
    """Paths changed since the base version (A added, M modified, D deleted)."""
    reply = _ask(directory, {"op": "status"})
    click.echo(f"{reply['volume']} base version {reply['base_version']}")
    _print_changes(reply["changes"])


@cli.command()
@click.argument("directory")
@click.option("-m", "--message", default="", help="What this version changes.")
def commit(directory: str, message: str) -> None:
    """Publish local changes as the volume's next version."""
    reply = _ask(directory, {"op": "commit", "message": message})
    if reply["noop"]:
        click.echo(f"nothing to commit (version {reply['version']})")
    else:
        click.echo(f"committed version {reply['version']}")
    for path in reply.get("skipped", []):
        click.echo(f"not committed (special file): {path}", err=True)


@cli.command()
@click.argument("target", metavar="VOLUME|DIR")
@host_option
def log(target: str, host: str | None) -> None:
    """The versions of a volume, newest first."""
    volume = target
    if os.path.isdir(target) and control_path(target).exists():
        info = _ask(target, {"op": "info"})
        volume, host = info["volume"], host or info["host"]
    client = Client(host)
    versions = _run(lambda: client.versions(volume))
    for v in sorted(versions, key=lambda v: -int(v["version"])):
        m = _run(lambda v=v: client.manifest(volume, int(v["version"])))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(m.get("issued_at", 0))))
        msg = (m.get("meta") or {}).get("message", "")
        click.echo(f"{m['version']:>5}  parent {m['parent']:<5} {when}  {msg}")


@cli.command()
@click.argument("directory")
@click.option("--to", type=int, default=None, help="Version to move to (default: the latest).")
def update(directory: str, to: int | None) -> None:
    """Move the base to the latest version (or N), keeping local changes."""
    reply = _ask(directory, {"op": "update", "to": to})
    click.echo(f"updated from version {reply['from']} to {reply['to']} ({reply['changed']} paths changed)")


@cli.command()
@click.argument("directory")
@click.argument("versions", nargs=-1, type=int)
def diff(directory: str, versions: tuple[int, ...]) -> None:
    """Local changes since the base, or the changes from version N to version M."""
    if len(versions) not in (0, 2):
        _fail("give no versions (local changes) or two: N M")
    if versions:
        _print_changes(_ask(directory, {"op": "diff", "a": versions[0], "b": versions[1]})["changes"])
    else:
        _print_changes(_ask(directory, {"op": "status"})["changes"])


@cli.command()
@click.argument("directory")
def umount(directory: str) -> None:
    """Unmount DIRECTORY (local changes stay in the cache for the next mount)."""
    pid = None
    try:
        pid = request(directory, {"op": "info"}, timeout=10).get("pid")
    except (EltonError, OSError):
        pass
    r = subprocess.run(["fusermount3", "-u", directory], capture_output=True, text=True)
    if r.returncode != 0:
        _fail(r.stderr.strip() or f"fusermount3 exited {r.returncode}")
    deadline = time.monotonic() + 30
    while pid and time.monotonic() < deadline and _alive(int(pid)):
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for a parent that will not reap it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


cli.add_command(docker_plugin)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="eltonfs", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
