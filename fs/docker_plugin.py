"""``eltonfs docker-plugin``: Docker's volume plugin protocol (JSON over HTTP on a unix socket).

Each container (Docker's mount ID) gets its own eltonfs mount, so its own upper layer, over the
lower layer cached once for all of them. Unmounting keeps uncommitted changes in that mount's
state directory: the plugin logs where, and ``docker volume inspect`` shows it in ``Status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fs.docker_mounts import Mounter, is_mount
from fs.docker_registry import MountRecord, PluginError, Registry, VolumeSpec, parse_options

if TYPE_CHECKING:  # aiohttp is imported only when serving, so other eltonfs commands start fast
    from aiohttp import web

log = logging.getLogger("eltonfs.docker")
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
DEFAULT_SOCKET = "/run/docker/plugins/elton.sock"
DEFAULT_STATE_DIR = "/var/lib/elton/docker"
MAX_BODY = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)[:100] or "default"


class Plugin:
    """The protocol's verbs over the registry and the mounter; every failure is a PluginError."""

    def __init__(self, state_dir: Path, host: str | None, mount_root: Path | None = None,
                 socket_path: Path = Path(DEFAULT_SOCKET)) -> None:
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.mount_root = mount_root or state_dir / "volumes"
        self.cache_dir = state_dir / "cache"
        self.registry = Registry(state_dir / "plugin.db")
        self.mounter = Mounter(host, self.cache_dir)
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.handlers: dict[str, Handler] = {
            "Plugin.Activate": self.activate, "VolumeDriver.Capabilities": self.capabilities,
            "VolumeDriver.Create": self.create, "VolumeDriver.Remove": self.remove,
            "VolumeDriver.Mount": self.mount, "VolumeDriver.Unmount": self.unmount,
            "VolumeDriver.Path": self.path, "VolumeDriver.Get": self.get, "VolumeDriver.List": self.list,
            "Elton.Commit": self.commit}
        self.reconcile()

    def reconcile(self) -> None:
        """After a restart (or a reboot): a mount recorded active whose mountpoint is gone is inactive."""
        for m in self.registry.mounts():
            if m.active and not is_mount(m.mountpoint):
                log.warning("%s: mount %s at %s is gone; its state (any uncommitted changes) stays in %s",
                            m.name, m.id, m.mountpoint, m.state_dir)
                self.registry.put_mount(MountRecord(m.name, m.id, m.mountpoint, m.state_dir, False, None))

    # -- protocol ---------------------------------------------------------------------------------
    async def activate(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["VolumeDriver"]}

    async def capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Capabilities": {"Scope": "global"}}

    async def create(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req)
        spec = parse_options(name, req.get("Opts"))
        async with self.locks[name]:
            existing = self.registry.get(name)
            if existing is not None:
                if (existing.volume, existing.version) != (spec.volume, spec.version):
                    raise PluginError(f"volume {name!r} exists with other options ({_describe(existing)})")
                return {}
            if await self.mounter.ensure_volume(spec.volume, spec.version):
                log.info("created Elton volume %s (empty)", spec.volume)
            self.registry.add(spec)
        log.info("created %s -> %s", name, _describe(spec))
        return {}

    async def remove(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req)
        async with self.locks[name]:
            self.registry.need(name)
            mounts = self.registry.mounts(name)
            active = [m.id for m in mounts if m.active]
            if active:
                raise PluginError(f"volume {name!r} is mounted by {len(active)} container(s) "
                                  f"(mount ids {', '.join(active)}); stop them first")
            for m in mounts:
                if m.changes == 0 and m.state_dir:
                    shutil.rmtree(m.state_dir, ignore_errors=True)
                elif m.state_dir:
                    log.warning("%s removed; uncommitted changes of mount %s stay in %s", name, m.id, m.state_dir)
            self.registry.remove(name)
            shutil.rmtree(self.mount_root / _safe(name), ignore_errors=True)
        log.info("removed %s", name)
        return {}

    async def mount(self, req: dict[str, Any]) -> dict[str, Any]:
        name, mount_id = _name(req), str(req.get("ID") or "")
        async with self.locks[name]:
            spec = self.registry.need(name)
            prev = self.registry.mount(name, mount_id)
            mountpoint = Path(prev.mountpoint) if prev else self.mount_root / _safe(name) / _safe(mount_id)
            if prev and prev.active and is_mount(mountpoint):
                return {"Mountpoint": str(mountpoint)}
            # A mount that kept state has its own base version: mount it as it was.
            await self.mounter.mount(spec.volume if prev and prev.state_dir else spec.mount_spec(), mountpoint)
            try:
                state_dir = str((await self.mounter.status(mountpoint))["state_dir"])
            except (PluginError, KeyError, OSError) as exc:
                log.warning("%s: no state dir reported by %s: %s", name, mountpoint, exc)
                state_dir = prev.state_dir if prev else None
            self.registry.put_mount(MountRecord(name, mount_id, str(mountpoint), state_dir, True, None))
        log.info("mounted %s (%s) for %s at %s", name, _describe(spec), mount_id, mountpoint)
        return {"Mountpoint": str(mountpoint)}

    async def unmount(self, req: dict[str, Any]) -> dict[str, Any]:
        name, mount_id = _name(req), str(req.get("ID") or "")
        async with self.locks[name]:
            spec = self.registry.need(name)
            m = self.registry.mount(name, mount_id)
            if m is None or not m.active:
                raise PluginError(f"volume {name!r} is not mounted for {mount_id!r}")
            mountpoint = Path(m.mountpoint)
            changes, state_dir = None, m.state_dir
            if is_mount(mountpoint):
                try:
                    st = await self.mounter.status(mountpoint)
                    changes, state_dir = len(st["changes"]), str(st.get("state_dir") or state_dir)
                except (PluginError, KeyError, OSError) as exc:
                    log.warning("%s: status of %s failed before unmount: %s", name, mountpoint, exc)
                await self.mounter.umount(mountpoint)
            if changes == 0:
                if state_dir:
                    shutil.rmtree(state_dir, ignore_errors=True)
                self.registry.drop_mount(name, mount_id)
                _rmdir(mountpoint)
                log.info("unmounted %s for %s (no uncommitted changes)", name, mount_id)
                return {}
            self.registry.put_mount(MountRecord(name, mount_id, str(mountpoint), state_dir, False, changes))
            log.warning("unmounted %s for %s: %s uncommitted change(s) kept in %s; to publish them: %s",
                        name, mount_id, "unknown" if changes is None else changes, state_dir,
                        self.recover_hint(spec, m))
        return {}

    async def path(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req)
        self.registry.need(name)
        return {"Mountpoint": self.mountpoint_of(name)}

    async def get(self, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req)
        spec = self.registry.need(name)
        return {"Volume": {"Name": name, "Mountpoint": self.mountpoint_of(name), "CreatedAt": spec.created_at,
                           "Status": self.status_of(spec)}}

    async def list(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Volumes": [{"Name": n, "Mountpoint": self.mountpoint_of(n)} for n in self.registry.names()]}

    async def commit(self, req: dict[str, Any]) -> dict[str, Any]:
        """Not Docker's: publish a container's changes, live or kept after exit (Docker has no such verb)."""
        name, mount_id = _name(req), req.get("ID")
        message = str(req.get("Message") or f"docker volume {name}")
        async with self.locks[name]:
            spec = self.registry.need(name)
            mounts = [m for m in self.registry.mounts(name) if mount_id in (None, "", m.id)]
            if len(mounts) != 1:
                ids = ", ".join(m.id for m in self.registry.mounts(name)) or "none"
                raise PluginError(f"give the ID of one mount of {name!r} to commit (mounts: {ids})")
            m = mounts[0]
            mountpoint = Path(m.mountpoint)
            kept = not is_mount(mountpoint)
            if kept:  # the container exited: mount its kept state for the commit only
                await self.mounter.mount(spec.volume, mountpoint)
            try:
                result = (await self.mounter.eltonfs("commit", str(mountpoint), "-m", message)).strip()
            finally:
                if kept:
                    await self.mounter.umount(mountpoint)
            if kept:
                if m.state_dir:
                    shutil.rmtree(m.state_dir, ignore_errors=True)
                self.registry.drop_mount(name, m.id)
                _rmdir(mountpoint)
        log.info("%s: commit of mount %s: %s", name, m.id, result)
        return {"Result": result}

    # -- reporting --------------------------------------------------------------------------------
    def mountpoint_of(self, name: str) -> str:
        """The latest active container mount ("" when no container uses the volume)."""
        active = [m for m in self.registry.mounts(name) if m.active]
        return active[-1].mountpoint if active else ""

    def recover_hint(self, spec: VolumeSpec, m: MountRecord) -> str:
        body = json.dumps({"Name": spec.name, "ID": m.id})
        return f"curl --unix-socket {self.socket_path} -X POST http://elton/Elton.Commit -d '{body}'"

    def status_of(self, spec: VolumeSpec) -> dict[str, Any]:
        """What ``docker volume inspect`` shows: the Elton volume, container mounts, kept changes."""
        mounts = self.registry.mounts(spec.name)
        kept = [{"id": m.id, "changes": m.changes, "state_dir": m.state_dir, "publish": self.recover_hint(spec, m)}
                for m in mounts if not m.active]
        return {"volume": spec.volume, "version": spec.version or "latest",
                "mounts": [{"id": m.id, "mountpoint": m.mountpoint} for m in mounts if m.active],
                "uncommitted": kept}

    # -- HTTP -------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        verb = request.match_info["verb"]
        handler = self.handlers.get(verb)
        try:
            if handler is None:
                raise PluginError(f"unknown request /{verb}")
            raw = await request.content.read(MAX_BODY + 1)
            if len(raw) > MAX_BODY:
                raise PluginError(f"request body over {MAX_BODY} bytes")
            try:
                req = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                raise PluginError(f"malformed JSON body: {exc}") from None
            if not isinstance(req, dict):
                raise PluginError("the request body must be a JSON object")
            reply = {**await handler(req), "Err": ""}
        except PluginError as exc:
            log.info("/%s refused: %s", verb, exc)
            reply = {"Err": str(exc)}
        except Exception as exc:  # a bug answers one request with an error; the plugin stays up
            log.exception("/%s failed", verb)
            reply = {"Err": f"{verb} failed: {exc!r}"}
        status = 404 if handler is None else 200
        return web.Response(status=status, text=json.dumps(reply), content_type=CONTENT_TYPE.split(";")[0])

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/{verb}", self.handle)
        return app


def _name(req: dict[str, Any]) -> str:
    name = req.get("Name")
    if not isinstance(name, str) or not name:
        raise PluginError("the request names no volume (Name)")
    return name


def _describe(spec: VolumeSpec) -> str:
    return f"volume={spec.volume} version={spec.version or 'latest'}"


def _rmdir(path: Path) -> None:
    for p in (path, path.parent):
        try:
            p.rmdir()
        except OSError:
            return


def _activated_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=3)


async def serve(plugin: Plugin, socket_path: Path) -> None:
    """Serve until SIGTERM/SIGINT on ``socket_path`` (mode 0660) or on a socket systemd passed."""
    from aiohttp import web

    runner = web.AppRunner(plugin.app(), access_log=None)
    await runner.setup()
    sock = _activated_socket()
    if sock is not None:
        site: web.BaseSite = web.SockSite(runner, sock)
        await site.start()
    else:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.is_socket():
            socket_path.unlink()
        old = os.umask(0o117)
        try:
            site = web.UnixSite(runner, str(socket_path))
            await site.start()
        finally:
            os.umask(old)
        os.chmod(socket_path, 0o660)
    log.info("serving the Docker volume plugin on %s (state in %s)", sock and "systemd socket" or socket_path,
             plugin.state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if sock is None:
            socket_path.unlink(missing_ok=True)
        plugin.registry.close()


@click.command("docker-plugin")
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Unix socket dockerd talks to.")
@click.option("--host", default=None, help="eltond URL (default $ELTON_HOST or http://127.0.0.1:7420)")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Plugin database, shared cache, mount state.")
@click.option("--mount-root", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where container mounts go (default STATE_DIR/volumes; a managed plugin's propagatedMount).")
def docker_plugin(socket_path: Path, host: str | None, state_dir: Path, mount_root: Path | None) -> None:
    """Serve Docker's volume plugin protocol: each container gets its own upper layer over a shared cache."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = state_dir.resolve()
    plugin = Plugin(state_dir, host or os.environ.get("ELTON_HOST"), mount_root.resolve() if mount_root else None,
                    socket_path)
    asyncio.run(serve(plugin, socket_path))


if __name__ == "__main__":
    docker_plugin()
