"""elton: put, get and inspect versions through this host's eltond."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mesh.cli.common import human_bytes, run
from mesh.client import Client, Progress, default_url
from mesh.core.keys import validate_key

PROGRESS_MIN_BYTES = 4 * 1024 * 1024


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``KEY@N`` -> (KEY, N); ``KEY`` -> (KEY, None). Only a numeric suffix counts as a version."""
    key, sep, version = ref.rpartition("@")
    if sep and version.isdigit() and key:
        return validate_key(key), int(version)
    return validate_key(ref), None


@contextmanager
def progress_bar(total: int | None, label: str, enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr for large transfers when a person is watching."""
    if not enabled or not sys.stderr.isatty() or (total is not None and total < PROGRESS_MIN_BYTES):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", envvar="ELTON_HOST", default=None, help=f"eltond URL [default: $ELTON_HOST or {default_url()}]")
@click.option("--http-token", envvar="ELTON_HTTP_TOKEN", default=None,
              help="bearer token of an eltond whose API is beyond loopback [$ELTON_HTTP_TOKEN]")
@click.pass_context
def cli(ctx: click.Context, host: str | None, http_token: str | None) -> None:
    """Store and read immutable versions of keys in the Elton mesh."""
    ctx.obj = Client(host, token=http_token)


@cli.command()
@click.argument("key")
@click.argument("source", type=click.Path(exists=True, allow_dash=True, dir_okay=False, path_type=str))
@click.option("--parent", type=int, help="fail unless the latest version is this one (0: new key)")
@click.option("--queue", is_flag=True, help="if the key's home is unreachable, keep it as a pending commit")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def put(client: Client, key: str, source: str, parent: int | None, queue: bool, as_json: bool) -> None:
    """Store FILE (or - for stdin) as the next version of KEY; prints KEY@N."""
    validate_key(key)
    if source == "-":
        result = client.put(key, sys.stdin.buffer, parent=parent, queue=queue)
    else:
        size = os.path.getsize(source)
        with open(source, "rb") as f, progress_bar(size, f"put {key}", True) as bar:
            result = client.put(key, f, parent=parent, progress=bar, queue=queue)
    if as_json:
        click.echo(json.dumps(result))
    elif "pending" in result:
        click.echo(f"{key} queued as {result['pending']} (elton pending lists it)")
    else:
        click.echo(f"{result['key']}@{result['version']}")


@cli.command()
@click.argument("ref")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              help="file to write [default: the key's last segment in the current directory]")
@click.pass_obj
def get(client: Client, ref: str, output: str | None) -> None:
    """Write KEY[@N] to a file; nothing is left behind if the download fails."""
    key, version = parse_ref(ref)
    if output == "-":
        _stream_to_stdout(client, key, version)
        return
    target = Path(output or key.rsplit("/", 1)[-1])
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            download = client.get(key, version)
            with progress_bar(download.size, f"get {key}", True) as bar:
                for data in download:
                    f.write(data)
                    if bar:
                        bar(len(data))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    click.echo(f"{key}@{download.version} -> {target}", err=True)


def _stream_to_stdout(client: Client, key: str, version: int | None) -> None:
    out = sys.stdout.buffer
    for data in client.get(key, version):
        out.write(data)
    out.flush()


@cli.command()
@click.argument("ref")
@click.pass_obj
def cat(client: Client, ref: str) -> None:
    """Write KEY[@N] to stdout."""
    key, version = parse_ref(ref)
    _stream_to_stdout(client, key, version)


@cli.command()
@click.argument("key")
@click.option("--limit", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def log(client: Client, key: str, limit: int, as_json: bool) -> None:
    """List KEY's versions, newest first."""
    versions = client.versions(validate_key(key), limit=limit)
    if as_json:
        click.echo(json.dumps(versions))
        return
    for v in versions:
        msg = v.get("meta", {}).get("message", "")
        click.echo(f"{v['key']}@{v['version']}  {_when(v['issued_at'])}  {human_bytes(v['size']):>10}  "
                   f"parent {v['parent']}  by {v['author'][:12]}{'  ' + msg if msg else ''}")


@cli.command(name="ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ls(client: Client, prefix: str, as_json: bool) -> None:
    """List keys (under PREFIX) with their latest version."""
    keys = client.list(prefix)
    if as_json:
        click.echo(json.dumps(keys))
        return
    for k in keys:
        click.echo(f"{k['key']}@{k['version']}  {human_bytes(k['size']):>10}  {_when(k['issued_at'])}")


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stat(client: Client, ref: str, as_json: bool) -> None:
    """Show the manifest of KEY[@N]: size, chunks, hash, parent, author, issuer."""
    key, version = parse_ref(ref)
    m: dict[str, Any] = client.manifest(key, version)
    if as_json:
        click.echo(json.dumps(m))
        return
    for name, value in [
        ("key", m["key"]), ("version", m["version"]), ("parent", m["parent"]),
        ("size", f"{m['size']} ({human_bytes(m['size'])})"), ("chunks", len(m["chunks"])),
        ("hash", f"blake3:{m['content_hash']}"), ("kind", m["kind"]), ("issued", _when(m["issued_at"])),
        ("author", m["author"]), ("issuer", m["issuer"]),
    ]:
        click.echo(f"{name + ':':9} {value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def members(client: Client, as_json: bool) -> None:
    """The mesh as this host sees it: id, cluster, role, address, state, incarnation, round-trip time
    (RTT: measured by this host's probes; EST: the estimate the cost model uses, that RTT or else the
    Vivaldi coordinates' distance)."""
    view = client.members()
    if as_json:
        click.echo(json.dumps(view["members"]))
        return
    click.echo(f"{'ID':14} {'CLUSTER':12} {'ROLE':7} {'ADDRESS':22} {'STATE':8} {'INC':>5} {'RTT':>9} {'EST':>9}")
    for m in sorted(view["members"], key=lambda m: (m["cluster"], m["id"])):
        rtt = "-" if m["rtt_ms"] is None else f"{m['rtt_ms']:.2f} ms"
        est = m.get("rtt_estimate_ms")  # absent from an older daemon
        est = "-" if est is None else f"{est:.2f} ms"
        me = " (self)" if m["id"] == view["self"] else ""
        click.echo(f"{m['id'][:12]:14} {m['cluster'][:12]:12} {m['role']:7} {m['address']:22} {m['state']:8} "
                   f"{m['incarnation']:>5} {rtt:>9} {est:>9}{me}")


@cli.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def where(client: Client, key: str, as_json: bool) -> None:
    """Where KEY lives: its home master, its replicas, its latest version and who holds it."""
    info = client.where(validate_key(key))
    if as_json:
        click.echo(json.dumps(info))
        return
    replicas = ", ".join(f"{r['node_id'][:12]} ({r['cluster']}{'' if r.get('live') else ', down'})"
                         for r in info.get("replicas", []))
    rows = [("key", info["key"]), ("home", info.get("home")), ("replicas", replicas),
            ("latest version", info.get("latest_version") or info.get("latest_known")),
            ("holders of latest", ", ".join(h[:12] for h in info.get("holders_of_latest", [])))]
    for name, value in rows:
        click.echo(f"{name + ':':19} {value if value not in (None, '', 0) else '-'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def pending(client: Client, as_json: bool) -> None:
    """Commits kept on this host until their key's home is reachable (put --queue)."""
    items = client.pending()
    if as_json:
        click.echo(json.dumps(items))
        return
    for p in items:
        click.echo(f"{p.get('id')}  {p.get('key')}  {p.get('state')}  {p.get('error', '')}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats(client: Client, as_json: bool) -> None:
    """What this host fetched: bytes by link class and cluster pair, cache hits and misses, costs."""
    st = client.stats()
    if as_json:
        click.echo(json.dumps(st))
        return
    for link, n in sorted(st["bytes_by_link"].items()):
        click.echo(f"fetched over {link + ':':12} {human_bytes(n):>10}  ({st['chunks_by_link'].get(link, 0)} chunks)")
    for pair, n in sorted(st["bytes_by_cluster_pair"].items()):
        click.echo(f"from cluster {pair + ':':20} {human_bytes(n):>10}")
    cache = st["cache"]
    click.echo(f"cache: {cache['hits']} hits, {cache['misses']} misses; expected cost ${st['expected_cost_usd']:.6f}")
    if "used_bytes" in cache:
        quota = "unlimited" if cache["quota_bytes"] is None else human_bytes(cache["quota_bytes"])
        click.echo(f"cached copies: {human_bytes(cache['used_bytes'])} of {quota} in {cache['chunks']} chunks; "
                   f"{cache['evictions']} evicted ({human_bytes(cache['evicted_bytes'])}), "
                   f"{cache['uncached']} served without keeping, "
                   f"{cache.get('spared_last_copies', 0)} kept as last copies")
    if st.get("holder_faults"):
        click.echo("holder faults: " + ", ".join(f"{k} {v}" for k, v in st["holder_faults"].items()))


@cli.group()
def mesh() -> None:
    """Admission: join tokens and removal of hosts (on the host that created the mesh)."""


@mesh.command()
@click.option("--ttl", default=24 * 3600.0, show_default=True, help="seconds the token stays valid")
@click.pass_obj
def token(client: Client, ttl: float) -> None:
    """Print a join token: eltond start --join ADDR --token T on a new host."""
    click.echo(client.mesh_token(ttl))


@mesh.command()
@click.argument("node")
@click.pass_obj
def remove(client: Client, node: str) -> None:
    """Revoke NODE (its id, or a unique prefix of 8+ digits): every host drops it."""
    click.echo(f"removed {client.mesh_remove(node)}")


def main(argv: list[str] | None = None) -> int:
    return run(cli, "elton", argv)


if __name__ == "__main__":
    sys.exit(main())
