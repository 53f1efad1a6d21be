"""The FUSE adapter: pyfuse3 operations over a mount's State.

Runs on one trio thread, so the namespace needs no locks; only fetching a lower file from the
daemon runs in worker threads. An uncached lower file's open returns once its first chunk is in the
cache; each read then waits (as a trio task, other requests go on) only for its own bytes. Every file is opened with ``keep_cache``: lower contents are
immutable and every write to an upper file passes through this mount, so the kernel's page cache
is always right. Inode lookup counts are honoured: an inode without a name is dropped once the
kernel has forgotten it and no handle is open.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from fs.state import ROOT, Inode, NamespaceError, State
from fs.store import Fetch
from fs.tree import Chunks
from mesh.errors import DaemonUnreachable, EltonError

log = logging.getLogger("eltonfs")
TIMEOUT = 10.0
BLKSIZE = 128 * 1024
XATTR_MAX = 64 * 1024

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _errors(fn: F) -> F:
    """Turn namespace, OS and daemon errors into FUSE errnos."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except pyfuse3.FUSEError:
            raise
        except NamespaceError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except DaemonUnreachable as exc:
            log.error("%s: cannot reach eltond (%s): what is not in the local cache fails with EIO until it "
                      "is back; cached files keep working", fn.__name__, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except EltonError as exc:
            log.error("%s: %s", fn.__name__, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class Handle:
    ino: int
    fd: int
    upper: bool
    fetch: Fetch | None = None  # a lower file still arriving: reads wait for their bytes
    size: int = 0  # a lower file's (immutable) size


class Operations(pyfuse3.Operations):
    def __init__(self, state: State, clock: Callable[[], int] = time.time_ns) -> None:
        super().__init__()
        self.state = state
        self.now = clock
        self.lookups: dict[int, int] = defaultdict(int)
        self.opened: dict[int, int] = defaultdict(int)
        self.handles: dict[int, Handle] = {}
        self.dir_listings: dict[int, list[tuple[bytes, int]]] = {}
        self._next_fh = 1
        self.readdir_reply: Callable[[Any, bytes, pyfuse3.EntryAttributes, int], bool] = pyfuse3.readdir_reply

    # -- helpers ----------------------------------------------------------------------------------
    def unused(self, ino: int) -> bool:
        return self.lookups.get(ino, 0) == 0 and self.opened.get(ino, 0) == 0 and ino != ROOT

    def _maybe_purge(self, ino: int) -> None:
        node = self.state.get(ino)
        if node is not None and node.nlink <= 0 and self.unused(ino):
            self.state.purge(ino)

    def attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = max(node.nlink, 0)
        a.st_uid, a.st_gid, a.st_rdev = node.uid, node.gid, node.rdev
        a.st_size = node.size
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = node.atime_ns, node.mtime_ns, node.ctime_ns
        if node.upper:
            st = os.stat(self.state.upper_path(node.ino))
            a.st_size, a.st_atime_ns, a.st_mtime_ns = st.st_size, st.st_atime_ns, st.st_mtime_ns
            a.st_ctime_ns = max(node.ctime_ns, st.st_ctime_ns)
        a.st_blksize = BLKSIZE
        a.st_blocks = (a.st_size + 511) // 512
        return a

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        self.lookups[ino] += 1
        return self.attr(self.state.need(ino))

    def _touch(self, ino: int) -> None:
        now = self.now()
        self.state.update(ino, mtime_ns=now, ctime_ns=now)

    def _dir(self, ino: int) -> Inode:
        node = self.state.need(ino)
        if not node.is_dir:
            raise NamespaceError(errno.ENOTDIR)
        return node

    def _new_name(self, parent: int, name: bytes) -> None:
        self._dir(parent)
        if len(name) > 255:
            raise NamespaceError(errno.ENAMETOOLONG)
        if self.state.lookup(parent, name) is not None:
            raise NamespaceError(errno.EEXIST)

    def _create_node(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                     **fields: Any) -> int:
        self._new_name(parent, name)
        with self.state.tx():
            ino = self.state.new_inode(mode, ctx.uid, ctx.gid, self.now(), **fields)
            self.state.link(parent, name, ino)
            self._touch(parent)
        return ino

    def _copy_up(self, node: Inode, truncate: bool = False) -> None:
        if node.upper:
            return
        self.state.copy_up(node, truncate)
        for h in self.handles.values():  # readers of the lower copy move to the upper file
            if h.ino == node.ino and not h.upper:
                os.close(h.fd)
                h.fd, h.upper, h.fetch = os.open(self.state.upper_path(node.ino), os.O_RDWR), True, None

    # -- names ------------------------------------------------------------------------------------
    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        if name == b".":
            ino: int | None = parent_inode
        elif name == b"..":
            row = self.state.db.execute("SELECT parent FROM dentries WHERE ino=? LIMIT 1",
                                        (parent_inode,)).fetchone()
            ino = row[0] if row else ROOT
        else:
            ino = self.state.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(ino)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self._maybe_purge(ino)

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attr(self.state.need(inode))

    @_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.state.need(inode)
        now = self.now()
        changes: dict[str, Any] = {"ctime_ns": now}
        if fields.update_size:
            if not stat.S_ISREG(node.mode):
                raise NamespaceError(errno.EINVAL)
            self._copy_up(node, truncate=attr.st_size == 0)
            os.truncate(self.state.upper_path(inode), attr.st_size)
        if fields.update_mode:
            changes["mode"] = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime or fields.update_mtime:
            if node.upper:
                st = os.stat(self.state.upper_path(inode))
                os.utime(self.state.upper_path(inode), ns=(
                    attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                    attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
            if fields.update_atime:
                changes["atime_ns"] = attr.st_atime_ns
            if fields.update_mtime:
                changes["mtime_ns"] = attr.st_mtime_ns
        self.state.update(inode, **changes)
        return self.attr(self.state.need(inode))

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.state.need(inode)
        if not stat.S_ISLNK(node.mode):
            raise NamespaceError(errno.EINVAL)
        return node.target or b""

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
                    ) -> pyfuse3.EntryAttributes:
        ino = self._create_node(parent_inode, name, stat.S_IFDIR | (mode & ~ctx.umask & 0o7777), ctx)
        return self._entry(ino)

    @_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
                    ) -> pyfuse3.EntryAttributes:
        perm = mode & ~ctx.umask & 0o7777
        if stat.S_ISREG(mode):
            ino = self._create_node(parent_inode, name, stat.S_IFREG | perm, ctx, upper=1)
            self.state.upper_path(ino).write_bytes(b"")
        else:
            ino = self._create_node(parent_inode, name, stat.S_IFMT(mode) | perm, ctx, rdev=rdev)
        return self._entry(ino)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        ino = self._create_node(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target, size=len(target))
        return self._entry(ino)

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.EntryAttributes:
        node = self.state.need(inode)
        if node.is_dir:
            raise NamespaceError(errno.EPERM)
        self._new_name(new_parent_inode, new_name)
        with self.state.tx():
            self.state.link(new_parent_inode, new_name, inode)
            self.state.update(inode, nlink=node.nlink + 1, ctime_ns=self.now())
            self._touch(new_parent_inode)
        return self._entry(inode)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self.state.lookup(parent_inode, name)
        if ino is None:
            raise NamespaceError(errno.ENOENT)
        if self.state.need(ino).is_dir:
            raise NamespaceError(errno.EISDIR)
        with self.state.tx():
            self.state.unlink(parent_inode, name)
            self.state.update(ino, ctime_ns=self.now())
            self._touch(parent_inode)
        self._maybe_purge(ino)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self.state.lookup(parent_inode, name)
        if ino is None:
            raise NamespaceError(errno.ENOENT)
        if not self.state.need(ino).is_dir:
            raise NamespaceError(errno.ENOTDIR)
        if not self.state.is_empty(ino):
            raise NamespaceError(errno.ENOTEMPTY)
        with self.state.tx():
            self.state.unlink(parent_inode, name)
            self.state.update(ino, lower_ref=None)
            self._touch(parent_inode)
        self._maybe_purge(ino)

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        src = self.state.lookup(parent_inode_old, name_old)
        if src is None:
            raise NamespaceError(errno.ENOENT)
        self._dir(parent_inode_new)
        dst = self.state.lookup(parent_inode_new, name_new)
        db = self.state.db
        move = "UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?"
        if flags & pyfuse3.RENAME_EXCHANGE:
            if dst is None:
                raise NamespaceError(errno.ENOENT)
            with self.state.tx():
                db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (dst, parent_inode_old, name_old))
                db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (src, parent_inode_new, name_new))
                self._touch(parent_inode_old)
                self._touch(parent_inode_new)
            return
        if dst is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise NamespaceError(errno.EEXIST)
            if dst == src:
                return
            src_dir, dst_node = self.state.need(src).is_dir, self.state.need(dst)
            if dst_node.is_dir and not src_dir:
                raise NamespaceError(errno.EISDIR)
            if src_dir and not dst_node.is_dir:
                raise NamespaceError(errno.ENOTDIR)
            if dst_node.is_dir and not self.state.is_empty(dst):
                raise NamespaceError(errno.ENOTEMPTY)
        with self.state.tx():
            if dst is not None:
                self.state.unlink(parent_inode_new, name_new)
                self.state.update(dst, ctime_ns=self.now())
            db.execute(move, (parent_inode_new, name_new, parent_inode_old, name_old))
            self.state.update(src, ctime_ns=self.now())
            self._touch(parent_inode_old)
            if parent_inode_new != parent_inode_old:
                self._touch(parent_inode_new)
        if dst is not None:
            self._maybe_purge(dst)

    # -- directories ------------------------------------------------------------------------------
    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._dir(inode)
        return inode

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0 or fh not in self.dir_listings:
            self.dir_listings[fh] = self.state.children(fh)
        listing = self.dir_listings[fh]
        for i in range(start_id, len(listing)):
            name, ino = listing[i]
            node = self.state.get(ino)
            if node is None:
                continue
            if not self.readdir_reply(token, name, self.attr(node), i + 1):
                break
            self.lookups[ino] += 1

    async def releasedir(self, fh: int) -> None:
        self.dir_listings.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- files ------------------------------------------------------------------------------------
    def _handle(self, ino: int, fd: int, upper: bool, fetch: Fetch | None = None, size: int = 0) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, fd, upper, fetch, size)
        self.opened[ino] += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.state.need(inode)
        if not stat.S_ISREG(node.mode):
            raise NamespaceError(errno.EINVAL if not node.is_dir else errno.EISDIR)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            if not node.upper and not (flags & os.O_TRUNC):
                await trio.to_thread.run_sync(self.state.store.file_path, node.lower_chunks())
            self._copy_up(node, truncate=bool(flags & os.O_TRUNC))
            path = self.state.upper_path(inode)
            if flags & os.O_TRUNC:
                os.truncate(path, 0)
            return self._handle(inode, os.open(path, os.O_RDWR), True)
        if node.upper:
            return self._handle(inode, os.open(self.state.upper_path(inode), os.O_RDWR), True)
        chunks = node.lower_chunks()
        fd, fetch = await trio.to_thread.run_sync(self._open_lower, chunks)
        node = self.state.need(inode)  # it may have been copied up meanwhile
        if node.upper:
            os.close(fd)
            return self._handle(inode, os.open(self.state.upper_path(inode), os.O_RDWR), True)
        return self._handle(inode, fd, False, fetch, sum(n for _, n in chunks))

    def _open_lower(self, chunks: Chunks) -> tuple[int, Fetch | None]:
        """A descriptor of a lower file's cached copy, and its fetch if it is still arriving. The open
        does not wait for the whole file, so reads start as soon as their bytes are there; it waits for
        the first chunk only, so an unreachable daemon still fails the open, as a cached file never does."""
        got = self.state.store.fetch(chunks)
        if not isinstance(got, Fetch):
            return os.open(got, os.O_RDONLY | os.O_CLOEXEC), None
        got.wait(chunks[0][1] if chunks else 0)
        return got.open_reader(), got

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ino = self._create_node(parent_inode, name, stat.S_IFREG | (mode & ~ctx.umask & 0o7777), ctx, upper=1)
        path = self.state.upper_path(ino)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        return self._handle(ino, fd, True), self._entry(ino)

    def read_ready(self, fh: int, off: int, size: int) -> bool:
        """True when ``read`` would not wait (the bytes are in the cache, or the file is upper)."""
        h = self.handles.get(fh)
        return h is None or h.fetch is None or h.fetch.ready(off + size)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = await self._readable(fh, off, size)
        return os.pread(h.fd, size, off)

    @_errors
    async def read_span(self, fh: int, off: int, size: int) -> tuple[int, int] | None:
        """For a lower file: its cached copy's descriptor and how many bytes from ``off`` to send, once
        they are there (the session splices them to the kernel without copying them through Python);
        None for an upper file (use ``read``)."""
        h = await self._readable(fh, off, size)
        if h.upper:
            return None
        return h.fd, max(0, min(size, h.size - off))

    async def _readable(self, fh: int, off: int, size: int) -> Handle:
        """The handle, once bytes [off, off + size) of a lower file still arriving are cached."""
        h = self.handles[fh]
        if h.fetch is not None:
            await self._arrived(h.fetch, off + size)
            if h.fetch is not None:  # else copied up meanwhile: the upper file answers
                try:
                    h.fetch.check(off + size)
                except (EltonError, pyfuse3.FUSEError):
                    raise
                except Exception as exc:  # the fetch's own failure (a cut connection, a full disk): EIO
                    log.error("read: the fetch of this lower file failed: %r", exc)
                    raise pyfuse3.FUSEError(errno.EIO) from None
                if h.fetch.done >= h.fetch.size:
                    h.fetch = None
        return h

    async def _arrived(self, fetch: Fetch, end: int) -> None:
        """Wait, without holding up other requests, until bytes [0, end) of a lower file are cached."""
        if fetch.ready(end):
            return
        event, token = trio.Event(), trio.lowlevel.current_trio_token()

        def wake() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        if fetch.on_ready(end, wake):
            await event.wait()

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if not h.upper:
            raise NamespaceError(errno.EBADF)
        return os.pwrite(h.fd, buf, off)

    async def flush(self, fh: int) -> None:
        return None

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles[fh]
        if h.upper:
            (os.fdatasync if datasync else os.fsync)(h.fd)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh)
        os.close(h.fd)
        self.opened[h.ino] -= 1
        if self.opened[h.ino] <= 0:
            del self.opened[h.ino]
        self._maybe_purge(h.ino)

    # -- extended attributes ----------------------------------------------------------------------
    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.state.need(inode)
        if name.startswith(b"system."):  # POSIX ACLs are not kept: tools then fall back to chmod
            raise NamespaceError(errno.EOPNOTSUPP)
        if len(value) > XATTR_MAX:
            raise NamespaceError(errno.E2BIG)
        self.state.db.execute("INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES(?, ?, ?)",
                              (inode, name, value))
        self.state.update(inode, ctime_ns=self.now())

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        row = self.state.db.execute("SELECT value FROM xattrs WHERE ino=? AND name=?", (inode, name)).fetchone()
        if row is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return bytes(row[0])

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [bytes(r[0]) for r in self.state.db.execute("SELECT name FROM xattrs WHERE ino=?", (inode,))]

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cur = self.state.db.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (inode, name))
        if cur.rowcount == 0:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        self.state.update(inode, ctime_ns=self.now())

    # -- file system ------------------------------------------------------------------------------
    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.state.dir)
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = st.f_bsize, st.f_frsize
        out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        out.f_files, out.f_ffree, out.f_favail = st.f_files, st.f_ffree, st.f_favail
        out.f_namemax = 255
        return out
