"""Where eltonfs gets and puts bytes: the daemon's chunks, behind a persistent local cache.

Directory objects and whole lower files are cached in the cache directory by content, so they are
valid forever: a lower file is fetched once, on first open, then served from the local disk.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from fs.tree import EMPTY_DIR, EMPTY_DIR_BYTES, Chunks, Entry, decode_dir
from mesh.core.codec import pack
from mesh.core.manifest import chunk_hash
from mesh.errors import CorruptChunk

log = logging.getLogger("eltonfs")
FIXED_PIECE = 4 * 1024 * 1024
DIR_CACHE = 4096
UPLOAD_BATCH_BYTES = 64 * 1024 * 1024
SPLICE = os.environ.get("ELTONFS_SPLICE", "1") != "0"  # 0: no splice, neither fetching nor answering READs


class ChunkClient(Protocol):
    """The part of ``mesh.client.Client`` eltonfs uses."""

    def put_chunk(self, data: bytes) -> str: ...
    def get_chunk(self, h: str, size: int | None = None) -> bytes: ...
    def missing_chunks(self, hashes: list[str]) -> list[str]: ...


def cut(stream: BinaryIO) -> Iterator[bytes]:
    """Cut a file into chunks: FastCDC from mesh.store.chunker, else fixed 4 MiB pieces."""
    try:
        from mesh.store.chunker import chunk_stream
    except ImportError:  # pragma: no cover - only before the chunker lands
        def chunk_stream(s: BinaryIO) -> Iterator[bytes]:
            while piece := s.read(FIXED_PIECE):
                yield piece
    return chunk_stream(stream)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _preallocate(fd: int, size: int) -> None:
    """Give a cache file its blocks before it is written: ext4 then writes into allocated (unwritten)
    extents, about half the kernel's work per byte of reserving delayed blocks one page at a time.
    The file has its full size at once, which says nothing: only a whole file gets its final name.
    A file system without fallocate is written as before."""
    if size > 0 and _libc.fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSPC:
            raise OSError(err, f"no room for a {size}-byte file in the cache")


class Fetch:
    """A lower file being written into the cache, front to back. Readers need not wait for all of it:
    ``open_reader`` gives a descriptor of the file that stays valid across its final rename, and
    ``ready``/``on_ready``/``wait`` say when a prefix has arrived, so a read is served as soon as its
    bytes are on disk while the rest still comes. The file gets its final name only once whole and
    synced: a partial file is never found by name."""

    def __init__(self, size: int, tmp: Path, path: Path, reader_fd: int) -> None:
        self.size, self.tmp, self.path = size, tmp, path
        self.done = 0  # bytes on disk, from the start
        self.finished = False
        self.error: BaseException | None = None
        self._reader_fd = reader_fd  # dup'ed for readers until the fetch ends
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._cond = threading.Condition()

    def open_reader(self) -> int:
        """A read-only descriptor of the file (valid across the final rename); the caller closes it."""
        with self._cond:
            if self._reader_fd >= 0:
                return os.dup(self._reader_fd)
            if self.error is not None:
                raise self.error
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def ready(self, end: int) -> bool:
        """True when bytes [0, end) are on disk, or when waiting longer is useless (the fetch failed:
        ``check`` then raises)."""
        return self.done >= min(end, self.size) or self.error is not None

    def check(self, end: int) -> None:
        """Raise the fetch's error unless bytes [0, end) are on disk (those stay good after a failure)."""
        if self.done < min(end, self.size):
            raise self.error if self.error is not None else RuntimeError("read before its bytes arrived")

    def on_ready(self, end: int, fn: Callable[[], None]) -> bool:
        """Call ``fn`` (from the fetch's thread) once ``ready(end)``; False, and no call, if it is already."""
        with self._cond:
            if self.ready(end):
                return False
            self._waiters.append((min(end, self.size), fn))
            return True

    def wait(self, end: int | None = None) -> None:
        """Block until bytes [0, end) are on disk (the whole file has its final name when ``end`` is
        None); raise the fetch's error if it failed first."""
        with self._cond:
            while not (self.finished or self.error is not None or (end is not None and self.ready(end))):
                self._cond.wait()
        if end is None or self.done < min(end, self.size):
            if self.error is not None:
                raise self.error

    def advance(self, n: int) -> None:
        with self._cond:
            self.done += n
            self._cond.notify_all()
            due = [fn for end, fn in self._waiters if end <= self.done]
            if due:
                self._waiters = [(end, fn) for end, fn in self._waiters if end > self.done]
        for fn in due:
            fn()

    def finish(self) -> None:
        self._end(None)

    def fail(self, exc: BaseException) -> None:
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        with self._cond:
            self.error, self.finished = exc, exc is None
            if self._reader_fd >= 0:
                os.close(self._reader_fd)
                self._reader_fd = -1
            due, self._waiters = self._waiters, []
            self._cond.notify_all()
        for _, fn in due:
            fn()


class Store:
    def __init__(self, client: ChunkClient, cache_dir: Path) -> None:
        self.client = client
        self.cache_dir = Path(cache_dir)
        self.objects_dir = self.cache_dir / "objects"
        self.files_dir = self.cache_dir / "files"
        self._dirs: OrderedDict[str, dict[str, Entry]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetches: dict[str, Fetch] = {}
        self._pending: dict[str, bytes] = {}  # chunks to upload, sent in batches
        self._pending_bytes = 0
        self._staged: dict[str, int] = {}  # every chunk staged since take_staged: the commit's durable list

    # -- directory objects ------------------------------------------------------------------------
    def load_dir(self, h: str) -> dict[str, Entry]:
        with self._lock:
            hit = self._dirs.get(h)
            if hit is not None:
                self._dirs.move_to_end(h)
                return hit
        if h == EMPTY_DIR:
            data = EMPTY_DIR_BYTES
        else:
            path = self.objects_dir / h[:2] / h
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = self.client.get_chunk(h)
                _atomic_write(path, lambda f: f.write(data))
            if chunk_hash(data) != h:
                path.unlink(missing_ok=True)
                raise CorruptChunk(f"directory object {h}")
        entries = decode_dir(data)
        with self._lock:
            self._dirs[h] = entries
            while len(self._dirs) > DIR_CACHE:
                self._dirs.popitem(last=False)
        return entries

    def put_objects(self, objects: dict[str, bytes]) -> int:
        """Upload the directory objects the daemon lacks; return how many were sent."""
        missing = self.client.missing_chunks(list(objects)) if objects else []
        for h in missing:
            self.client.put_chunk(objects[h])
        for h, data in objects.items():
            path = self.objects_dir / h[:2] / h
            if not path.exists():
                _atomic_write(path, lambda f, d=data: f.write(d))
        return len(missing)

    # -- files ------------------------------------------------------------------------------------
    def file_path(self, chunks: Chunks) -> Path:
        """The cached whole file with these chunks, fetched first if absent (one fetch at a time)."""
        got = self.fetch(chunks)
        if isinstance(got, Path):
            return got
        got.wait()
        return got.path

    def fetch(self, chunks: Chunks) -> Path | Fetch:
        """The cached file's path, or the fetch that is writing it (started here if none runs): callers
        for the same file share one fetch."""
        name = chunk_hash(pack([[h, s] for h, s in chunks]))
        path = self.files_dir / name[:2] / name
        if path.exists():
            return path
        with self._lock:
            running = self._fetches.get(name)
            if running is not None:
                return running
            if path.exists():
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                f = Fetch(sum(s for _, s in chunks), tmp, path, os.open(tmp, os.O_RDONLY | os.O_CLOEXEC))
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            self._fetches[name] = f
        threading.Thread(target=self._run_fetch, args=(name, f, fd, chunks), daemon=True,
                         name="eltonfs-fetch").start()
        return f

    def _run_fetch(self, name: str, f: Fetch, fd: int, chunks: Chunks) -> None:
        try:
            t0 = time.perf_counter()
            with open(fd, "wb", closefd=True) as out:
                _preallocate(fd, f.size)
                self._fetch(chunks, out, f.advance)
                t1 = time.perf_counter()
                os.fdatasync(fd)  # readers already have every byte; the name must only ever mean whole
            os.replace(f.tmp, f.path)
            if f.size >= 64 << 20:
                dt = t1 - t0
                log.info("fetched a lower file: %d MiB in %.2f s (%.0f MB/s), synced in %.2f s", f.size >> 20,
                         dt, f.size / dt / 1e6, time.perf_counter() - t1)
        except BaseException as exc:
            f.tmp.unlink(missing_ok=True)
            with self._lock:  # before fail: a reader told of the failure may open again at once
                self._fetches.pop(name, None)
            f.fail(exc)
        else:
            with self._lock:
                self._fetches.pop(name, None)
            f.finish()

    def _fetch(self, chunks: Chunks, f: BinaryIO, advance: Callable[[int], None]) -> None:
        """Write a file's chunks to ``f``: one streamed request for the whole file (the node fetches what
        it lacks in one pipelined mesh read). From a daemon on this host the stream is spliced into the
        file inside the kernel (the daemon checked each chunk); from another, chunks are received into
        reused buffers and hashed while a second thread writes the previous one to disk."""
        to_fd = getattr(self.client, "stream_chunks_to_fd", None)
        if to_fd is not None and chunks and getattr(self.client, "is_local", False) and SPLICE:
            f.flush()
            to_fd(list(chunks), f.fileno(), advance)
            return
        into = getattr(self.client, "stream_chunks_into", None)
        if into is None or not chunks:
            stream = getattr(self.client, "stream_chunks", None)
            pieces = (stream(list(chunks)) if stream is not None and chunks
                      else (self.client.get_chunk(h, size) for h, size in chunks))
            for (h, size), data in zip(chunks, pieces, strict=True):
                if len(data) != size:
                    raise CorruptChunk(f"chunk {h} has {len(data)} bytes, not {size}")
                f.write(data)
                f.flush()
                advance(size)
            return
        f.flush()
        fd = f.fileno()
        largest = max(size for _, size in chunks)
        # three buffers: one being written, one queued for the writer, one being received
        buffers = [bytearray(largest) for _ in range(3)]
        todo: queue.Queue[memoryview | None] = queue.Queue(maxsize=1)
        failed: list[BaseException] = []

        def writer() -> None:
            try:
                while (view := todo.get()) is not None:
                    n = len(view)
                    while view:
                        view = view[os.write(fd, view):]
                    advance(n)
            except BaseException as exc:  # noqa: BLE001 - handed to the fetching thread
                failed.append(exc)
                while todo.get() is not None:  # let the receiver finish or fail
                    pass

        t = threading.Thread(target=writer, name="eltonfs-fetch-writer", daemon=True)
        t.start()
        # the daemon checked every chunk it streams: a daemon on this host is not checked a second time
        views = into(list(chunks), buffers, verify=not getattr(self.client, "is_local", False))
        try:
            for view in views:
                if failed:
                    break
                todo.put(view)
        finally:
            views.close()
            todo.put(None)
            t.join()
        if failed:
            raise failed[0]

    def remove_stale_partials(self) -> int:
        """Delete the partial files that fetches of dead processes left (a mount killed mid-fetch): they
        were never named as whole files, so nothing reads them, but each holds its file's full size.
        A partial file's name carries its writer's pid; a live writer's file is left alone."""
        removed = 0
        for tmp in self.files_dir.glob("*/.*.tmp"):
            try:
                pid = int(tmp.name.split(".")[-3])
            except (ValueError, IndexError):
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:  # alive, someone else's
                continue
            tmp.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d partial cache files left by fetches that did not finish", removed)
        return removed

    def is_cached(self, chunks: Chunks) -> bool:
        name = chunk_hash(pack([[h, s] for h, s in chunks]))
        return (self.files_dir / name[:2] / name).exists()

    def cut_file(self, path: Path, upload: bool) -> Chunks:
        """The chunk list of a local file; with ``upload``, stage its chunks for ``flush``."""
        out: list[tuple[str, int]] = []
        with open(path, "rb") as f:
            for data in cut(f):
                h = chunk_hash(data)
                out.append((h, len(data)))
                if upload:
                    self._staged[h] = len(data)
                if upload and h not in self._pending:
                    self._pending[h] = data
                    self._pending_bytes += len(data)
                    if self._pending_bytes >= UPLOAD_BATCH_BYTES:
                        self.flush()
        return tuple(out)

    def flush(self) -> int:
        """Upload the staged chunks the daemon lacks (one question for the whole batch)."""
        pending, self._pending, self._pending_bytes = self._pending, {}, 0
        sent = 0
        hashes = list(pending)
        for i in range(0, len(hashes), 10_000):
            for h in self.client.missing_chunks(hashes[i:i + 10_000]):
                self.client.put_chunk(pending[h])
                sent += 1
        return sent

    def take_staged(self) -> list[tuple[str, int]]:
        """The chunks staged by ``cut_file(upload=True)`` since the last call (uploaded, or already on
        the daemon): a commit asks the daemon to put them on ``copies`` holders before it issues."""
        staged, self._staged = self._staged, {}
        return list(staged.items())

    def ensure_uploaded(self, chunks: Chunks) -> bool:
        """True when the daemon holds every chunk of this list."""
        return not chunks or not self.client.missing_chunks([h for h, _ in chunks])
