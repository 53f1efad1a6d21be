"""Run a mount: the FUSE session and a control socket, on one trio thread.

``eltonfs status/commit/update/diff DIR`` talk to the mount through a Unix socket whose path is
derived from the mountpoint, so they run inside the process that owns the namespace (a commit's
snapshot is then one step of the FUSE thread, atomic with respect to every write).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fs.fuse_ops import Operations
from fs.fuse_session import Session
from fs.state import State
from fs.store import Store
from fs.volume import MergeConflict, Volume, tree_root
from mesh.client import Client
from mesh.core.manifest import chunk_hash
from mesh.errors import DaemonUnreachable, EltonError

log = logging.getLogger("eltonfs")
MAX_REQUEST = 1 << 20


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.environ.get("ELTONFS_CACHE_DIR") or Path(base) / "eltonfs")


def run_dir() -> Path:
    if os.environ.get("ELTONFS_RUN_DIR"):
        return Path(os.environ["ELTONFS_RUN_DIR"])
    if os.geteuid() == 0:
        return Path("/run/eltonfs")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/eltonfs-{os.geteuid()}") / "eltonfs"


def mount_id(mountpoint: str | Path) -> str:
    return chunk_hash(os.path.realpath(mountpoint).encode())[:24]


def control_path(mountpoint: str | Path) -> Path:
    return run_dir() / f"{mount_id(mountpoint)}.sock"


def state_dir_for(cache_dir: Path, volume: str, mountpoint: str | Path) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in volume)[:60]
    return cache_dir / "mounts" / f"{safe}-{mount_id(mountpoint)}"


class Mount:
    def __init__(self, volume: str, version: int | None, mountpoint: Path, host: str | None,
                 cache_dir: Path, options: tuple[str, ...] = ()) -> None:
        self.mountpoint = Path(os.path.realpath(mountpoint))
        self.control = control_path(self.mountpoint)  # now: resolving paths under a mount we serve would hang
        self.client = Client(host)
        self.store = Store(self.client, cache_dir)
        self.state = State(state_dir_for(cache_dir, volume, self.mountpoint), self.store)
        existing = self.state.get_meta("volume")
        if existing is None:
            m = self.client.manifest(volume, version)
            if m.get("kind") != "tree":
                raise EltonError(f"{volume} is not a volume (its versions are {m.get('kind')}s)")
            self.state.initialise(volume, int(m["version"]), tree_root(m), time.time_ns())
            self.client.author_hint = m.get("author")  # holds the tree before the masters know it
        elif version is not None and int(self.state.get_meta("base_version")) != version:
            raise EltonError(f"{self.mountpoint} keeps local state at base version "
                             f"{self.state.get_meta('base_version')}; mount without @N and run "
                             f"`eltonfs update {self.mountpoint} --to {version}`")
        self.state.cleanup_orphans()
        self.store.remove_stale_partials()
        self.ops = Operations(self.state)
        self.volume = Volume(self.state, self.store, self.client, self.ops.unused, self._invalidate)
        self.options = {"fsname=eltonfs", "subtype=eltonfs", "default_permissions", "allow_other", *options}

        self.session: Session | None = None

    def _invalidate(self, parent: int, name: bytes) -> None:
        if self.session is not None:
            self.session.invalidate_entry(parent, name)
        else:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    # -- control ----------------------------------------------------------------------------------
    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        try:
            if op == "info":
                return {"ok": True, **self.volume.info(), "mountpoint": str(self.mountpoint), "pid": os.getpid(),
                        "host": self.client.base_url,
                        "fuse": self.session.stats() if self.session is not None else {"engine": "pyfuse3"}}
            if op == "status":
                return {"ok": True, "changes": self.volume.status(), **self.volume.info()}
            if op == "commit":
                return {"ok": True, **self.volume.commit(str(req.get("message") or ""))}
            if op == "update":
                return {"ok": True, **self.volume.update(req.get("to"))}
            if op == "diff":
                return {"ok": True, "changes": self.volume.diff(int(req["a"]), int(req["b"]))}
            return {"ok": False, "error": f"unknown request {op!r}"}
        except MergeConflict as exc:
            return {"ok": False, "error": exc.message, "conflicts": exc.paths, "code": exc.code}
        except DaemonUnreachable as exc:
            log.error("%s: cannot reach eltond: %s", op, exc.message)
            return {"ok": False, "code": exc.code, "error": f"cannot reach eltond at {self.client.base_url} "
                    f"({exc.message}); nothing changed, local files are kept; retry once it is back"}
        except EltonError as exc:
            return {"ok": False, "error": exc.message, "code": exc.code}
        except Exception as exc:  # a bug must not take the mount down with it
            log.exception("%s failed", op)
            return {"ok": False, "error": f"{op} failed: {exc!r} (see the mount's log)"}

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            try:
                req = json.loads(buf)
            except ValueError:
                reply = {"ok": False, "error": "malformed request"}
            else:
                reply = self.handle(req)
            await stream.send_all(json.dumps(reply).encode() + b"\n")

    async def _serve_control(self, path: Path, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.unlink(missing_ok=True)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(self._serve_client, [listener])

    async def _signals(self, stop: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                if self.session is not None:
                    stop.cancel()
                else:
                    pyfuse3.terminate()

    async def _main(self, ready: Path | None) -> None:
        async with trio.open_nursery() as nursery:
            ctl = self.control
            await nursery.start(self._serve_control, ctl)
            nursery.start_soon(self._signals, nursery.cancel_scope)
            if ready is not None:
                ready.write_text(str(os.getpid()))
            try:
                await (self.session.serve() if self.session is not None else pyfuse3.main())
            finally:
                ctl.unlink(missing_ok=True)
                nursery.cancel_scope.cancel()

    def run(self, ready: Path | None = None) -> None:
        """Mount, serve until unmounted (``eltonfs umount`` or a signal), then clean up."""
        if use_own_session():
            self.session = Session(self.ops, self.mountpoint)
            self.session.mount()
            try:
                trio.run(self._main, ready)
            finally:
                self.session.close()
                self.state.db.close()
            return
        pyfuse3.init(self.ops, str(self.mountpoint), self.options)
        try:
            trio.run(self._main, ready)
        finally:
            pyfuse3.close(unmount=True)
            self.state.db.close()


def use_own_session() -> bool:
    """Serve /dev/fuse ourselves (FUSE passthrough) as root, unless ELTONFS_ENGINE=pyfuse3 says otherwise."""
    return os.geteuid() == 0 and os.environ.get("ELTONFS_ENGINE", "passthrough") != "pyfuse3"


def request(mountpoint: str | Path, req: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Send one request to the mount at ``mountpoint``; raise EltonError when there is none."""
    path = control_path(mountpoint)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError as exc:
        s.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise EltonError(f"{mountpoint} is not an eltonfs mount (or its process is gone)") from None
        raise
    with s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            data = s.recv(65536)
            if not data:
                break
            buf += data
    return json.loads(buf)
