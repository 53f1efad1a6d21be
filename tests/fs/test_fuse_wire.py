"""The FUSE protocol structs eltonfs speaks on /dev/fuse, checked against the kernel's layouts."""

from __future__ import annotations

import stat

import pyfuse3

from fs import fuse_wire as w


def test_struct_sizes_match_the_kernel_header() -> None:
    assert w.IN_HEADER.size == 40 and w.OUT_HEADER.size == 16
    assert w.ATTR.size == 88 and w.ENTRY_HEAD.size + w.ATTR.size == 128
    assert w.INIT_OUT.size == 64 and w.OPEN_OUT.size == 16 and w.SETATTR_IN.size == 88
    assert w.READ_IN.size == w.WRITE_IN.size == 40 and w.KSTATFS.size == 80 and w.BACKING_MAP.size == 16


def test_header_and_reply_framing() -> None:
    raw = w.IN_HEADER.pack(60, w.LOOKUP, 7, 1, 1000, 100, 42, 1, 0) + b"x" * 20
    h = w.parse_header(raw)
    assert (h.length, h.opcode, h.unique, h.nodeid, h.uid, h.gid, h.pid, h.extlen) == (60, 1, 7, 1, 1000, 100, 42, 8)
    parts = w.reply(7, b"abc", b"de", error=2)
    assert w.OUT_HEADER.unpack(parts[0]) == (21, -2, 7) and parts[1:] == [b"abc", b"de"]


def test_init_negotiates_the_64_bit_flags() -> None:
    body = w.INIT_IN.pack(7, 45, 131072, w.INIT_EXT | w.ASYNC_READ, w.PASSTHROUGH >> 32) + bytes(44)
    major, minor, readahead, flags = w.init_flags(body)
    assert (major, minor, readahead) == (7, 45, 131072)
    assert flags & w.PASSTHROUGH and flags & w.ASYNC_READ
    out = w.INIT_OUT.unpack(w.pack_init_out(flags, readahead, 1 << 20, 256, 1))
    assert out[:4] == (7, 40, 131072, (w.INIT_EXT | w.ASYNC_READ))
    assert out[6] == 1 << 20 and out[8] == 256 and out[10] == w.PASSTHROUGH >> 32 and out[11] == 1


def test_entries_and_dirents() -> None:
    a = pyfuse3.EntryAttributes()
    a.st_ino, a.st_mode, a.st_size, a.st_mtime_ns = 5, stat.S_IFREG | 0o644, 10, 1_500_000_001
    a.entry_timeout = a.attr_timeout = 1.5
    entry = w.pack_entry(a)
    nodeid, _, ev, av, evn, avn = w.ENTRY_HEAD.unpack_from(entry)
    assert (nodeid, ev, av, evn, avn) == (5, 1, 1, 500_000_000, 500_000_000)
    attr = w.ATTR.unpack_from(entry, w.ENTRY_HEAD.size)
    assert attr[0] == 5 and attr[1] == 10 and attr[4] == 1 and attr[7] == 500_000_001
    d = w.pack_dirent(5, 3, b"name", 8)
    assert len(d) % 8 == 0 and w.DIRENT.unpack_from(d) == (5, 3, 4, 8) and d[24:28] == b"name"
    assert w.names(memoryview(b"old\0new\0"), 2) == [b"old", b"new"]
