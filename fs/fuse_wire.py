"""The FUSE kernel protocol (7.40) as data: opcodes, flags and the structs eltonfs speaks on /dev/fuse.

Pure: no I/O. ``fs.fuse_session`` reads requests and writes replies with these; a test can build
and parse every message without a kernel. Layouts follow include/uapi/linux/fuse.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

MAJOR, MINOR = 7, 40

# opcodes
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 20, 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS, CREATE, INTERRUPT, DESTROY = 27, 28, 29, 30, 34, 35, 36, 38
BATCH_FORGET, READDIRPLUS, RENAME2 = 42, 44, 45
NOTIFY_INVAL_ENTRY = 3

# INIT flags
ASYNC_READ, ATOMIC_O_TRUNC, BIG_WRITES = 1 << 0, 1 << 3, 1 << 5
DO_READDIRPLUS, MAX_PAGES, HANDLE_KILLPRIV_V2, INIT_EXT = 1 << 13, 1 << 22, 1 << 28, 1 << 30
PASSTHROUGH = 1 << 37

# open reply flags
FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_PASSTHROUGH = 1 << 0, 1 << 1, 1 << 7

# setattr valid bits
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME = 1, 2, 4, 8, 16, 32
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_KILL_SUIDGID = 128, 256, 1 << 11
WRITE_KILL_SUIDGID = 1 << 2
OPEN_KILL_SUIDGID = 1 << 0

# ioctls on /dev/fuse: _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t)
DEV_IOC_BACKING_OPEN = 0x4010E501
DEV_IOC_BACKING_CLOSE = 0x4004E502

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # ... max_pages map_alignment flags2 max_stack_depth unused[6]
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_HEAD = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_nsec attr_nsec
ATTR_OUT_HEAD = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQIIQII")
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<II")  # without FUSE_SETXATTR_EXT
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
KSTATFS = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")
INVAL_ENTRY = struct.Struct("<QII")
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding


@dataclass(frozen=True)
class Header:
    length: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    extlen: int


def parse_header(buf: bytes | memoryview) -> Header:
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = IN_HEADER.unpack_from(buf)
    return Header(length, opcode, unique, nodeid, uid, gid, pid, extlen * 8)


def reply(unique: int, *parts: bytes, error: int = 0) -> list[bytes]:
    """The buffers of one reply (header first); ``error`` is a positive errno."""
    size = OUT_HEADER.size + sum(len(p) for p in parts)
    return [OUT_HEADER.pack(size, -error, unique), *parts]


def names(body: bytes | memoryview, count: int) -> list[bytes]:
    """``count`` NUL-terminated names at the start of a request body."""
    out: list[bytes] = []
    data = bytes(body)
    for _ in range(count):
        name, _, data = data.partition(b"\0")
        out.append(name)
    return out


def timeout_parts(seconds: float) -> tuple[int, int]:
    return int(seconds), int((seconds - int(seconds)) * 1e9)


def pack_attr(a: Any) -> bytes:
    """A pyfuse3-style EntryAttributes (st_* fields in ns) as struct fuse_attr."""
    def split(ns: int) -> tuple[int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000
    at, atn = split(a.st_atime_ns)
    mt, mtn = split(a.st_mtime_ns)
    ct, ctn = split(a.st_ctime_ns)
    return ATTR.pack(a.st_ino, a.st_size, a.st_blocks, at, mt, ct, atn, mtn, ctn, a.st_mode, a.st_nlink,
                     a.st_uid, a.st_gid, a.st_rdev & 0xFFFFFFFF, a.st_blksize, 0)


def pack_entry(a: Any) -> bytes:
    ev, evn = timeout_parts(a.entry_timeout)
    av, avn = timeout_parts(a.attr_timeout)
    return ENTRY_HEAD.pack(a.st_ino, a.generation, ev, av, evn, avn) + pack_attr(a)


def pack_attr_out(a: Any) -> bytes:
    av, avn = timeout_parts(a.attr_timeout)
    return ATTR_OUT_HEAD.pack(av, avn, 0) + pack_attr(a)


def pack_dirent(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    raw = DIRENT.pack(ino, off, len(name), dtype) + name
    return raw + b"\0" * (-len(raw) % 8)


def pack_init_out(flags: int, max_readahead: int, max_write: int, max_pages: int, stack_depth: int) -> bytes:
    return INIT_OUT.pack(MAJOR, MINOR, max_readahead, flags & 0xFFFFFFFF, 16, 12, max_write, 1, max_pages, 0,
                         flags >> 32, stack_depth)


def init_flags(buf: bytes | memoryview) -> tuple[int, int, int, int]:
    """(major, minor, max_readahead, flags as one 64-bit word) of an INIT request body."""
    major, minor, readahead, flags, flags2 = INIT_IN.unpack_from(buf)
    if flags & INIT_EXT:
        flags |= flags2 << 32
    return major, minor, readahead, flags
