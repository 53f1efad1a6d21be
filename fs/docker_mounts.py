"""Real eltonfs mounts for the Docker plugin, made through the ``eltonfs`` CLI.

The CLI starts each mount as its own process, so container mounts survive a plugin restart and the
plugin stays a thin bookkeeper. All mounts share one cache directory (the cached lower layer);
each mountpoint gets its own state directory there (its upper layer).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from fs.docker_registry import PluginError
from fs.mount import request
from mesh.client import Client
from mesh.errors import EltonError, KeyNotFound

MOUNT_TIMEOUT = 120.0


class Mounter:
    def __init__(self, host: str | None, cache_dir: Path) -> None:
        self.host = host
        self.cache_dir = cache_dir

    def client(self) -> Client:
        return Client(self.host, timeout=30)

    async def eltonfs(self, *args: str, timeout: float = MOUNT_TIMEOUT) -> str:
        """Run one eltonfs command; its own error message becomes ours."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fs.cli", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PluginError(f"eltonfs {args[0]} did not finish in {timeout:.0f} s") from None
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip() or f"exited {proc.returncode}"
            raise PluginError(text.removeprefix("eltonfs: "))
        return out.decode(errors="replace")

    async def mount(self, spec: str, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        args = ["mount", spec, str(mountpoint), "--cache-dir", str(self.cache_dir)]
        await self.eltonfs(*args, *(["--host", self.host] if self.host else []))

    async def umount(self, mountpoint: Path) -> None:
        await self.eltonfs("umount", str(mountpoint))

    async def status(self, mountpoint: Path) -> dict[str, Any]:
        """The mount's uncommitted changes and state dir (asked of the mount process itself)."""
        reply = await asyncio.to_thread(request, mountpoint, {"op": "status"}, 60)
        if not reply.get("ok"):
            raise PluginError(f"status of {mountpoint}: {reply.get('error', 'failed')}")
        return reply

    async def ensure_volume(self, volume: str, version: int | None) -> bool:
        """Check the Elton volume (and version) exists; create an empty one when unpinned. True if created."""
        def check() -> bool:
            from fs.store import Store
            from fs.volume import init_volume

            client = self.client()
            try:
                m = client.manifest(volume, version)
            except KeyNotFound:
                if version is not None:
                    raise PluginError(f"Elton volume {volume!r} does not exist (so has no version {version})") \
                        from None
                init_volume(client, volume, Store(client, self.cache_dir))
                return True
            except EltonError as exc:
                raise PluginError(f"Elton volume {volume!r}: {exc.message}") from None
            finally:
                client.close()
            if m.get("kind") != "tree":
                raise PluginError(f"{volume!r} is an Elton key of {m.get('kind')}s, not a volume")
            return False
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return await asyncio.to_thread(check)


def is_mount(path: str | Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False
