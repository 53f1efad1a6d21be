from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs.merge import merge3
from fs.overlay import PathMissing, apply
from fs.tree import DIR, EMPTY_DIR, Entry, decode_dir, diff, dir_entry, encode_dir, file_entry
from mesh.errors import ProtocolError
from tests.fs.treeutil import MemObjects


def f(content: str, **kw) -> Entry:
    return file_entry(((content * 64, len(content)),), **kw)


def d(**kw) -> Entry:
    return dir_entry("", **kw)


def test_dir_object_roundtrip_and_canonical():
    entries = {"b": f("1"), "a": d(mode=0o700), "l": Entry("symlink", target="../x\udcff"),
               "x": f("2", xattrs=(("user.k", b"v"),))}
    data = encode_dir(entries)
    assert decode_dir(data) == entries
    assert encode_dir(dict(reversed(list(entries.items())))) == data


def test_decode_rejects_garbage():
    with pytest.raises(ProtocolError):
        decode_dir(b"\x93\x01")
    with pytest.raises(ProtocolError):
        decode_dir(encode_dir({"a": f("1")}).replace(b"file", b"fil3"))


def test_diff_skips_equal_subtrees_and_reports_leaves():
    m = MemObjects()
    base = m.build({"a": d(), "a/x": f("1"), "a/y": f("2"), "b": d(), "b/z": f("3")})
    new = m.build({"a": d(), "a/x": f("9"), "a/w": f("4"), "b": d(), "b/z": f("3"), "c": f("5")})
    loaded: list[str] = []

    def load(h):
        loaded.append(h)
        return m.load(h)

    changes = {p: (o is not None, n is not None) for p, o, n in diff(base, new, load)}
    assert changes == {"a/x": (True, True), "a/w": (False, True), "a/y": (True, False), "c": (False, True)}
    b_ref = m.load(base)["b"].ref
    assert b_ref not in loaded  # the unchanged subtree was never read


def test_apply_changes_only_the_touched_path():
    m = MemObjects()
    base = m.build({"a": d(), "a/x": f("1"), "b": d(), "b/z": f("3")})
    out = apply(base, [("a/x", None, f("2")), ("a/n", None, None)], m.load)
    m.add(out.objects)
    assert m.flatten(out.root)["a/x"] == f("2")
    assert m.load(out.root)["b"] == m.load(base)["b"]
    assert len(out.objects) == 2  # a and the root
    with pytest.raises(PathMissing):
        apply(base, [("nope/x", None, f("1"))], m.load)


def test_merge_disjoint_changes_and_conflicts():
    m = MemObjects()
    base = m.build({"a": d(), "a/x": f("1"), "a/y": f("2")})
    ours = m.build({"a": d(), "a/x": f("9"), "a/y": f("2"), "new": f("n")})
    theirs = m.build({"a": d(), "a/x": f("1"), "a/y": f("7")})
    r = merge3(base, ours, theirs, m.load)
    assert r.conflicts == []
    m.add(r.objects)
    assert m.flatten(r.root) == {"a": d(), "a/x": f("9"), "a/y": f("7"), "new": f("n")}
    clash = m.build({"a": d(), "a/x": f("8"), "a/y": f("2")})
    assert merge3(base, ours, clash, m.load).conflicts == ["a/x"]
    gone = m.build({})
    assert merge3(base, ours, gone, m.load).conflicts == ["a/x"]
    assert merge3(base, base, theirs, m.load).root == theirs
    assert merge3(base, ours, ours, m.load).root == ours


# -- properties ---------------------------------------------------------------------------------
NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)
OPS = st.lists(st.tuples(st.sampled_from(["write", "mkdir", "rm", "chmod"]), PATHS, st.integers(0, 3)),
               max_size=8)


def run(flat: dict[str, Entry], ops) -> dict[str, Entry]:
    flat = dict(flat)
    for op, path, n in ops:
        parent = path.rpartition("/")[0]
        if parent and (parent not in flat or flat[parent].kind != DIR):
            continue
        if op == "rm":
            for p in [p for p in flat if p == path or p.startswith(path + "/")]:
                del flat[p]
        elif op == "chmod" and path in flat and flat[path].kind == DIR:
            flat[path] = d(mode=0o700 + n)
        elif op == "write" and (path not in flat or flat[path].kind != DIR):
            flat[path] = f(str(n))
        elif op == "mkdir" and path not in flat:
            flat[path] = d()
    return flat


def _related(p: str, q: str) -> bool:
    return p == q or p.startswith(q + "/") or q.startswith(p + "/")


def _changed(a: dict[str, Entry], b: dict[str, Entry]) -> set[str]:
    return {p for p in set(a) | set(b) if a.get(p) != b.get(p)}


@settings(max_examples=300, deadline=None)
@given(OPS, OPS, OPS)
def test_merge_properties(base_ops, our_ops, their_ops):
    m = MemObjects()
    base_flat = run({}, base_ops)
    ours_flat, theirs_flat = run(base_flat, our_ops), run(base_flat, their_ops)
    base, ours, theirs = m.build(base_flat), m.build(ours_flat), m.build(theirs_flat)
    r = merge3(base, ours, theirs, m.load)
    mine, others = _changed(base_flat, ours_flat), _changed(base_flat, theirs_flat)
    if not any(_related(p, q) for p in mine for q in others):
        assert r.conflicts == []
    if not r.conflicts:
        m.add(r.objects)
        merged = m.flatten(r.root)
        for p in set(ours_flat) | set(theirs_flat) | set(base_flat):
            expected = ours_flat.get(p) if p in mine else theirs_flat.get(p)
            assert merged.get(p) == expected, p
    # diff then apply reproduces the target tree
    out = apply(base, diff(base, ours, m.load), m.load)
    m.add(out.objects)
    assert out.root == ours
    assert list(diff(ours, ours, m.load)) == [] and list(diff(EMPTY_DIR, EMPTY_DIR, m.load)) == []


def test_hard_link_groups_roundtrip_and_old_trees_still_decode():
    group = ("d/b", "top")
    entries = {"top": f("1", links=group), "plain": f("1")}
    assert decode_dir(encode_dir(entries)) == entries
    # a directory object written before links existed: 11 fields per entry, and it decodes the same
    from mesh.core.codec import pack
    old = pack([1, [[b"plain", "file", 0o644, 0, 0, 0, 1, [["1" * 64, 1]], "", b"", []]]])
    assert decode_dir(old) == {"plain": f("1")}
    assert encode_dir({"plain": f("1")}) == old, "an entry without links encodes (and hashes) as before"
    with pytest.raises(ProtocolError):
        decode_dir(pack([1, [[b"x", "file", 0o644, 0, 0, 0, 1, [], "", b""]]]))
