"""Serve the FUSE protocol on /dev/fuse ourselves, so upper files can use FUSE passthrough.

libfuse 3.14 and pyfuse3 3.5 cannot negotiate FUSE_PASSTHROUGH, so this session mounts with
mount(2) and speaks the protocol directly, calling the same ``fs.fuse_ops.Operations`` pyfuse3
would. An upper file is opened with FOPEN_PASSTHROUGH on its ``upper/<ino>`` file: the kernel then
reads, writes and mmaps that file itself, at local speed, and commit sees every byte at once. A
lower file (an immutable cached copy, perhaps still arriving) is opened with keep_cache and read
through this process, its READs answered by splice(2) from the cached copy, so a copy-up while it
is open stays correct: the kernel forbids mixing passthrough and cached opens
of one inode, so an inode keeps the mode of its first open until its last handle is released.
Needs CAP_SYS_ADMIN (mount, FUSE_DEV_IOC_BACKING_OPEN); ``fs.mount`` uses pyfuse3 otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import queue
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fs import fuse_wire as w
from fs.fuse_ops import Operations
from fs.store import SPLICE

log = logging.getLogger("eltonfs")
MAX_WRITE = 1 << 20
BUFSIZE = MAX_WRITE + 64 * 1024
READAHEAD_KB = 4096
PIPE_SIZE = 2 << 20  # a 1 MiB reply spliced through the pipe takes up to 258 page slots
PAGE = 4096
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Ctx:
    """What Operations reads of a pyfuse3.RequestContext."""

    uid: int
    gid: int
    pid: int
    umask: int = 0


@dataclass
class Fields:
    """What Operations reads of a pyfuse3.SetattrFields."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False


class DirBuffer:
    """A READDIRPLUS reply being filled: ``add`` says False once the next entry would not fit."""

    def __init__(self, size: int) -> None:
        self.size, self.used = size, 0
        self.parts: list[bytes] = []

    def add(self, name: bytes, attr: Any, next_id: int) -> bool:
        dirent = w.pack_dirent(attr.st_ino, next_id, name, stat.S_IFMT(attr.st_mode) >> 12)
        item = w.pack_entry(attr) + dirent
        if self.used + len(item) > self.size:
            return False
        self.parts.append(item)
        self.used += len(item)
        return True


@dataclass
class IoMode:
    passthrough: bool
    users: int
    backing_id: int = 0


def readdir_reply(token: DirBuffer, name: bytes, attr: Any, next_id: int) -> bool:
    return token.add(name, attr, next_id)


class Session:
    def __init__(self, ops: Operations, mountpoint: Path, fsname: str = "eltonfs") -> None:
        self.ops, self.mountpoint, self.fsname = ops, mountpoint, fsname
        self.fd = -1
        self.passthrough = self.negotiated = False
        self.modes: dict[int, IoMode] = {}
        self.fh_ino: dict[int, int] = {}
        self.counts: Counter[int] = Counter()
        self._inval: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._inval_thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None  # (read end, write end): lower-file reads are spliced through it
        self._pipe_pages = 0  # its size in page slots
        self.spliced = 0  # READs answered by splice
        ops.readdir_reply = readdir_reply  # type: ignore[method-assign,assignment]

    # -- mount ------------------------------------------------------------------------------------
    def mount(self) -> None:
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = (f"fd={self.fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},"
                "default_permissions,allow_other")
        if _libc.mount(self.fsname.encode(), str(self.mountpoint).encode(), b"fuse.eltonfs",
                       MS_NOSUID | MS_NODEV, opts.encode()) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"mount {self.mountpoint}: {os.strerror(err)}")
        os.set_blocking(self.fd, False)
        if SPLICE:
            self._pipe = self._open_pipe()
            if self._pipe is not None:
                self._pipe_pages = fcntl.fcntl(self._pipe[1], fcntl.F_GETPIPE_SZ) // PAGE

    @staticmethod
    def _open_pipe() -> tuple[int, int] | None:
        """The pipe that carries lower-file replies from the page cache to /dev/fuse (see ``_splice_reply``):
        2 MiB when allowed (CAP_SYS_RESOURCE), else the system's maximum; ``init`` then keeps READs small
        enough for a reply to fit."""
        r, wr = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        for size in (PIPE_SIZE, PIPE_SIZE // 2):
            try:
                fcntl.fcntl(wr, fcntl.F_SETPIPE_SZ, size)
                return r, wr
            except OSError as exc:
                err = exc
        log.info("lower-file reads are copied, not spliced: no pipe of %d bytes (%s)", PIPE_SIZE // 2, err)
        os.close(r)
        os.close(wr)
        return None

    def close(self) -> None:
        """Detach the mount (if still there) and drop the connection."""
        if self.fd < 0:
            return
        if os.path.ismount(self.mountpoint):
            _libc.umount2(str(self.mountpoint).encode(), MNT_DETACH)
        os.close(self.fd)
        self.fd = -1
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None
        if self._inval_thread is not None:
            self._inval.put(None)

    def stats(self) -> dict[str, Any]:
        """What `eltonfs` info reports: the engine and how many reads and writes came through us."""
        return {"engine": "session", "passthrough": self.passthrough, "reads": self.counts[w.READ],
                "writes": self.counts[w.WRITE], "spliced_reads": self.spliced, "requests": sum(self.counts.values())}

    # -- notifications ----------------------------------------------------------------------------
    def invalidate_entry(self, parent: int, name: bytes) -> None:
        """Tell the kernel to forget a name; from a thread, as the kernel may wait on a request we serve."""
        if self._inval_thread is None:
            self._inval_thread = threading.Thread(target=self._invalidator, daemon=True, name="inval")
            self._inval_thread.start()
        self._inval.put((parent, name))

    def _invalidator(self) -> None:
        while (item := self._inval.get()) is not None:
            parent, name = item
            body = w.INVAL_ENTRY.pack(parent, len(name), 0) + name + b"\0"
            try:
                os.writev(self.fd, [w.OUT_HEADER.pack(w.OUT_HEADER.size + len(body), w.NOTIFY_INVAL_ENTRY, 0), body])
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EBADF, errno.ENOTCONN):
                    log.warning("invalidate %r: %s", name, exc)

    # -- the loop ---------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Answer requests until the file system is unmounted."""
        buf = bytearray(BUFSIZE)  # reused: requests served inline are done before the next read
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    n = os.readv(self.fd, [buf])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # the request was interrupted before we read it
                        continue
                    if exc.errno == errno.ENODEV:  # unmounted
                        break
                    raise
                h = w.parse_header(buf)
                self.counts[h.opcode] += 1
                if h.opcode in (w.OPEN, w.CREATE) or (h.opcode == w.READ and not self._read_ready(buf)):
                    # may wait for the daemon (a lower file's fetch): the other requests go on meanwhile
                    nursery.start_soon(self._dispatch, h, bytes(buf[:n]))
                elif h.opcode == w.DESTROY:
                    self._send(w.reply(h.unique))
                    break
                else:
                    await self._dispatch(h, buf)
                    if h.opcode == w.INIT:  # the kernel has applied the reply: now readahead may grow
                        self._raise_readahead()
            nursery.cancel_scope.cancel()

    def _read_ready(self, buf: bytearray) -> bool:
        """True when a READ can be answered at once (its bytes are cached), so it is served inline."""
        fh, off, size, *_ = w.READ_IN.unpack_from(buf, w.IN_HEADER.size)
        return self.ops.read_ready(fh, off, size)

    def _raise_readahead(self) -> None:
        """Let the kernel read ahead READAHEAD_KB of a file read through us (a lower file), so a
        sequential read comes in 1 MiB requests, not the default 128 KiB: 8x fewer Python round trips."""
        mnt = os.fsencode(os.path.abspath(self.mountpoint))  # not realpath: it would stat our own mount
        try:
            with open("/proc/self/mountinfo", "rb") as f:
                devs = [line.split()[2] for line in f if line.split()[4] == mnt]
            if devs:
                Path(f"/sys/class/bdi/{devs[-1].decode()}/read_ahead_kb").write_text(f"{READAHEAD_KB}\n")
        except OSError as exc:
            log.info("readahead left at the kernel's default: %s", exc)

    def _send(self, parts: list[bytes]) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                log.error("the kernel refused a reply (%s); the request fails, the mount stays", exc)

    async def _dispatch(self, h: w.Header, buf: bytes | bytearray) -> None:
        body = memoryview(buf)[w.IN_HEADER.size:h.length - h.extlen]
        handler = HANDLERS.get(h.opcode)
        if h.opcode in (w.FORGET, w.BATCH_FORGET):
            await handler(self, h, body)  # type: ignore[misc]
            return
        try:
            if handler is None:
                raise pyfuse3.FUSEError(errno.ENOSYS)
            parts = await handler(self, h, body)
        except pyfuse3.FUSEError as exc:
            parts = w.reply(h.unique, error=exc.errno)
        except Exception:
            log.exception("FUSE opcode %d failed", h.opcode)
            parts = w.reply(h.unique, error=errno.EIO)
        if parts is not None:  # None: the handler has replied itself
            self._send(parts)

    # -- handlers ---------------------------------------------------------------------------------
    def ctx(self, h: w.Header, umask: int = 0) -> Ctx:
        return Ctx(h.uid, h.gid, h.pid, umask)

    async def init(self, h: w.Header, body: memoryview) -> list[bytes]:
        major, minor, readahead, offered = w.init_flags(body)
        if major != 7:
            raise pyfuse3.FUSEError(errno.EPROTO)
        # HANDLE_KILLPRIV_V2: the kernel then marks inodes without privileges S_NOSEC instead of asking for
        # security.capability before every write; we clear setuid/setgid when it says so.
        want = (w.ASYNC_READ | w.ATOMIC_O_TRUNC | w.BIG_WRITES | w.DO_READDIRPLUS | w.MAX_PAGES | w.INIT_EXT
                | w.HANDLE_KILLPRIV_V2)
        if os.environ.get("ELTONFS_PASSTHROUGH", "1") != "0":
            want |= w.PASSTHROUGH
        flags = want & offered
        self.passthrough = self.negotiated = bool(flags & w.PASSTHROUGH)
        log.info("FUSE %d.%d, passthrough %s", major, minor, "on" if self.passthrough else "off")
        # a spliced READ reply is a header page and the data's pages, all in the pipe at once
        max_pages = min(MAX_WRITE // PAGE, self._pipe_pages - 1) if self._pipe is not None else MAX_WRITE // PAGE
        return w.reply(h.unique, w.pack_init_out(flags, readahead, MAX_WRITE, max_pages,
                                                 1 if self.passthrough else 0))

    async def lookup(self, h: w.Header, body: memoryview) -> list[bytes]:
        (name,) = w.names(body, 1)
        return w.reply(h.unique, w.pack_entry(await self.ops.lookup(h.nodeid, name, self.ctx(h))))

    async def forget(self, h: w.Header, body: memoryview) -> None:
        await self.ops.forget([(h.nodeid, w.FORGET_IN.unpack_from(body)[0])])

    async def batch_forget(self, h: w.Header, body: memoryview) -> None:
        count, _ = w.BATCH_FORGET_IN.unpack_from(body)
        off = w.BATCH_FORGET_IN.size
        await self.ops.forget([w.FORGET_ONE.unpack_from(body, off + i * w.FORGET_ONE.size) for i in range(count)])

    async def getattr(self, h: w.Header, body: memoryview) -> list[bytes]:
        return w.reply(h.unique, w.pack_attr_out(await self.ops.getattr(h.nodeid, self.ctx(h))))

    async def setattr(self, h: w.Header, body: memoryview) -> list[bytes]:
        (valid, _, fh, size, _, atime, mtime, _, atimens, mtimens, _, mode, _, uid, gid, _
         ) = w.SETATTR_IN.unpack_from(body)
        now = time.time_ns()
        a = pyfuse3.EntryAttributes()
        a.st_size, a.st_mode, a.st_uid, a.st_gid = size, mode, uid, gid
        a.st_atime_ns = now if valid & w.FATTR_ATIME_NOW else atime * 1_000_000_000 + atimens
        a.st_mtime_ns = now if valid & w.FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtimens
        f = Fields(bool(valid & w.FATTR_SIZE), bool(valid & w.FATTR_MODE), bool(valid & w.FATTR_UID),
                   bool(valid & w.FATTR_GID), bool(valid & (w.FATTR_ATIME | w.FATTR_ATIME_NOW)),
                   bool(valid & (w.FATTR_MTIME | w.FATTR_MTIME_NOW)))
        if not f.update_mode and (valid & w.FATTR_KILL_SUIDGID or f.update_uid or f.update_gid):
            await self._kill_suidgid(h)  # with HANDLE_KILLPRIV_V2 chown and truncate leave this to us
        out = await self.ops.setattr(h.nodeid, a, f, None, self.ctx(h))  # type: ignore[arg-type]
        return w.reply(h.unique, w.pack_attr_out(out))

    async def _kill_suidgid(self, h: w.Header) -> None:
        node = self.ops.state.need(h.nodeid)
        kill = stat.S_ISUID | (stat.S_ISGID if node.mode & stat.S_IXGRP else 0)
        if stat.S_ISREG(node.mode) and node.mode & kill:
            a = pyfuse3.EntryAttributes()
            a.st_mode = node.mode & ~kill
            await self.ops.setattr(h.nodeid, a, Fields(update_mode=True), None, self.ctx(h))  # type: ignore[arg-type]

    async def readlink(self, h: w.Header, body: memoryview) -> list[bytes]:
        return w.reply(h.unique, await self.ops.readlink(h.nodeid, self.ctx(h)))

    async def symlink(self, h: w.Header, body: memoryview) -> list[bytes]:
        name, target = w.names(body, 2)
        return w.reply(h.unique, w.pack_entry(await self.ops.symlink(h.nodeid, name, target, self.ctx(h))))

    async def mknod(self, h: w.Header, body: memoryview) -> list[bytes]:
        mode, rdev, umask, _ = w.MKNOD_IN.unpack_from(body)
        (name,) = w.names(body[w.MKNOD_IN.size:], 1)
        return w.reply(h.unique, w.pack_entry(await self.ops.mknod(h.nodeid, name, mode, rdev, self.ctx(h, umask))))

    async def mkdir(self, h: w.Header, body: memoryview) -> list[bytes]:
        mode, umask = w.MKDIR_IN.unpack_from(body)
        (name,) = w.names(body[w.MKDIR_IN.size:], 1)
        return w.reply(h.unique, w.pack_entry(await self.ops.mkdir(h.nodeid, name, mode, self.ctx(h, umask))))

    async def unlink(self, h: w.Header, body: memoryview) -> list[bytes]:
        await self.ops.unlink(h.nodeid, w.names(body, 1)[0], self.ctx(h))
        return w.reply(h.unique)

    async def rmdir(self, h: w.Header, body: memoryview) -> list[bytes]:
        await self.ops.rmdir(h.nodeid, w.names(body, 1)[0], self.ctx(h))
        return w.reply(h.unique)

    async def rename(self, h: w.Header, body: memoryview) -> list[bytes]:
        (newdir,) = w.RENAME_IN.unpack_from(body)
        old, new = w.names(body[w.RENAME_IN.size:], 2)
        await self.ops.rename(h.nodeid, old, newdir, new, 0, self.ctx(h))
        return w.reply(h.unique)

    async def rename2(self, h: w.Header, body: memoryview) -> list[bytes]:
        newdir, flags, _ = w.RENAME2_IN.unpack_from(body)
        old, new = w.names(body[w.RENAME2_IN.size:], 2)
        await self.ops.rename(h.nodeid, old, newdir, new, flags, self.ctx(h))
        return w.reply(h.unique)

    async def link(self, h: w.Header, body: memoryview) -> list[bytes]:
        (old,) = w.LINK_IN.unpack_from(body)
        (name,) = w.names(body[w.LINK_IN.size:], 1)
        return w.reply(h.unique, w.pack_entry(await self.ops.link(old, h.nodeid, name, self.ctx(h))))

    def _open_reply(self, fi: pyfuse3.FileInfo) -> bytes:
        """Choose the io mode of a new handle (see the module docstring) and pack fuse_open_out."""
        handle = self.ops.handles[fi.fh]
        ino = handle.ino
        self.fh_ino[fi.fh] = ino
        mode = self.modes.get(ino)
        if mode is None:
            mode = self.modes[ino] = IoMode(passthrough=False, users=0)
            if self.passthrough and handle.upper:
                try:
                    mode.backing_id = fcntl.ioctl(self.fd, w.DEV_IOC_BACKING_OPEN,
                                                  bytearray(w.BACKING_MAP.pack(handle.fd, 0, 0)))
                    mode.passthrough = True
                except OSError as exc:
                    log.warning("passthrough off for this mount: backing open failed: %s", exc)
                    self.passthrough = False
        mode.users += 1
        if mode.passthrough:
            return w.OPEN_OUT.pack(fi.fh, w.FOPEN_PASSTHROUGH, mode.backing_id)
        # an upper file may have been written by passthrough since its pages were cached: drop them
        keep = fi.keep_cache and not (self.negotiated and handle.upper)
        return w.OPEN_OUT.pack(fi.fh, w.FOPEN_KEEP_CACHE if keep else 0, 0)

    def _closed(self, fh: int) -> None:
        ino = self.fh_ino.pop(fh, None)
        mode = self.modes.get(ino) if ino is not None else None
        if mode is None:
            return
        mode.users -= 1
        if mode.users <= 0:
            del self.modes[ino]  # type: ignore[arg-type]
            if mode.passthrough:
                fcntl.ioctl(self.fd, w.DEV_IOC_BACKING_CLOSE, bytearray(mode.backing_id.to_bytes(4, "little")))

    async def open(self, h: w.Header, body: memoryview) -> list[bytes]:
        flags, open_flags = w.OPEN_IN.unpack_from(body)
        if open_flags & w.OPEN_KILL_SUIDGID:
            await self._kill_suidgid(h)
        fi = await self.ops.open(h.nodeid, flags, self.ctx(h))
        return w.reply(h.unique, self._open_reply(fi))

    async def create(self, h: w.Header, body: memoryview) -> list[bytes]:
        flags, mode, umask, _ = w.CREATE_IN.unpack_from(body)
        (name,) = w.names(body[w.CREATE_IN.size:], 1)
        fi, attr = await self.ops.create(h.nodeid, name, mode, flags, self.ctx(h, umask))
        return w.reply(h.unique, w.pack_entry(attr), self._open_reply(fi))

    async def read(self, h: w.Header, body: memoryview) -> list[bytes] | None:
        fh, off, size, *_ = w.READ_IN.unpack_from(body)
        if self._pipe is not None:
            span = await self.ops.read_span(fh, off, size)
            if span is not None and span[1] > 0 and self._splice_reply(h.unique, span[0], off, span[1]):
                return None
        return w.reply(h.unique, await self.ops.read(fh, off, size))

    def _splice_reply(self, unique: int, fd: int, off: int, n: int) -> bool:
        """Answer a READ with ``n`` bytes of ``fd`` from ``off`` moved by splice(2): the cached file's pages
        go into the pipe by reference and the kernel copies them once, into the FUSE file's page cache,
        instead of a pread into a new bytes object and a writev out of it. False (nothing sent, the
        caller replies by copying) when the pipe cannot take the reply."""
        assert self._pipe is not None
        r, wr = self._pipe
        if 1 + (off % PAGE + n + PAGE - 1) // PAGE > self._pipe_pages:
            return False
        size = w.OUT_HEADER.size + n
        try:
            os.write(wr, w.OUT_HEADER.pack(size, 0, unique))
            moved = 0
            while moved < n:
                k = os.splice(fd, wr, n - moved, offset_src=off + moved, flags=os.SPLICE_F_NONBLOCK)
                if k <= 0:
                    raise OSError(errno.EIO, "the cached file ended early")
                moved += k
        except OSError as exc:
            log.debug("splice of a read refused (%s): copied instead", exc)
            self._drain_pipe()
            return False
        try:
            os.splice(r, self.fd, size)
        except OSError as exc:
            self._drain_pipe()
            if exc.errno == errno.ENOENT:  # the request was interrupted meanwhile
                return True
            log.warning("lower-file reads are copied from now on: /dev/fuse refused a spliced reply (%s)", exc)
            for end in self._pipe:
                os.close(end)
            self._pipe = None
            return False
        self.spliced += 1
        return True

    def _drain_pipe(self) -> None:
        assert self._pipe is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._pipe[0], PIPE_SIZE):
                pass

    async def write(self, h: w.Header, body: memoryview) -> list[bytes]:
        fh, off, size, flags, *_ = w.WRITE_IN.unpack_from(body)
        if flags & w.WRITE_KILL_SUIDGID:
            await self._kill_suidgid(h)
        n = await self.ops.write(fh, off, body[w.WRITE_IN.size:w.WRITE_IN.size + size])  # type: ignore[arg-type]
        return w.reply(h.unique, w.WRITE_OUT.pack(n, 0))

    async def statfs(self, h: w.Header, body: memoryview) -> list[bytes]:
        s = await self.ops.statfs(self.ctx(h))
        return w.reply(h.unique, w.KSTATFS.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                                s.f_bsize, s.f_namemax, s.f_frsize, 0))

    async def release(self, h: w.Header, body: memoryview) -> list[bytes]:
        fh = w.RELEASE_IN.unpack_from(body)[0]
        await self.ops.release(fh)
        self._closed(fh)
        return w.reply(h.unique)

    async def fsync(self, h: w.Header, body: memoryview) -> list[bytes]:
        fh, flags, _ = w.FSYNC_IN.unpack_from(body)
        await self.ops.fsync(fh, bool(flags & 1))
        return w.reply(h.unique)

    async def flush(self, h: w.Header, body: memoryview) -> list[bytes]:
        await self.ops.flush(w.RELEASE_IN.unpack_from(body)[0])
        return w.reply(h.unique)

    async def setxattr(self, h: w.Header, body: memoryview) -> list[bytes]:
        size, _ = w.SETXATTR_IN.unpack_from(body)
        rest = bytes(body[w.SETXATTR_IN.size:])
        name, _, value = rest.partition(b"\0")
        await self.ops.setxattr(h.nodeid, name, value[:size], self.ctx(h))
        return w.reply(h.unique)

    async def _sized(self, h: w.Header, size: int, data: bytes) -> list[bytes]:
        if size == 0:
            return w.reply(h.unique, w.GETXATTR_OUT.pack(len(data), 0))
        if len(data) > size:
            raise pyfuse3.FUSEError(errno.ERANGE)
        return w.reply(h.unique, data)

    async def getxattr(self, h: w.Header, body: memoryview) -> list[bytes]:
        size, _ = w.GETXATTR_IN.unpack_from(body)
        (name,) = w.names(body[w.GETXATTR_IN.size:], 1)
        return await self._sized(h, size, await self.ops.getxattr(h.nodeid, name, self.ctx(h)))

    async def listxattr(self, h: w.Header, body: memoryview) -> list[bytes]:
        size, _ = w.GETXATTR_IN.unpack_from(body)
        names = await self.ops.listxattr(h.nodeid, self.ctx(h))
        return await self._sized(h, size, b"".join(n + b"\0" for n in names))

    async def removexattr(self, h: w.Header, body: memoryview) -> list[bytes]:
        await self.ops.removexattr(h.nodeid, w.names(body, 1)[0], self.ctx(h))
        return w.reply(h.unique)

    async def opendir(self, h: w.Header, body: memoryview) -> list[bytes]:
        fh = await self.ops.opendir(h.nodeid, self.ctx(h))
        return w.reply(h.unique, w.OPEN_OUT.pack(fh, 0, 0))

    async def readdirplus(self, h: w.Header, body: memoryview) -> list[bytes]:
        fh, off, size, *_ = w.READ_IN.unpack_from(body)
        token = DirBuffer(size)
        await self.ops.readdir(fh, off, token)  # type: ignore[arg-type]
        return w.reply(h.unique, *token.parts)

    async def releasedir(self, h: w.Header, body: memoryview) -> list[bytes]:
        await self.ops.releasedir(w.RELEASE_IN.unpack_from(body)[0])
        return w.reply(h.unique)

    async def fsyncdir(self, h: w.Header, body: memoryview) -> list[bytes]:
        return w.reply(h.unique)


HANDLERS: dict[int, Any] = {
    w.INIT: Session.init, w.LOOKUP: Session.lookup, w.FORGET: Session.forget,
    w.BATCH_FORGET: Session.batch_forget, w.GETATTR: Session.getattr, w.SETATTR: Session.setattr,
    w.READLINK: Session.readlink, w.SYMLINK: Session.symlink, w.MKNOD: Session.mknod, w.MKDIR: Session.mkdir,
    w.UNLINK: Session.unlink, w.RMDIR: Session.rmdir, w.RENAME: Session.rename, w.RENAME2: Session.rename2,
    w.LINK: Session.link, w.OPEN: Session.open, w.CREATE: Session.create, w.READ: Session.read,
    w.WRITE: Session.write, w.STATFS: Session.statfs, w.RELEASE: Session.release, w.FSYNC: Session.fsync,
    w.FLUSH: Session.flush, w.SETXATTR: Session.setxattr, w.GETXATTR: Session.getxattr,
    w.LISTXATTR: Session.listxattr, w.REMOVEXATTR: Session.removexattr, w.OPENDIR: Session.opendir,
    w.READDIRPLUS: Session.readdirplus, w.RELEASEDIR: Session.releasedir,
    w.FSYNCDIR: Session.fsyncdir,
}
