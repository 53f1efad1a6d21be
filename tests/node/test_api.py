"""The node's HTTP API and client library against a real eltond process."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
from urllib.parse import urlsplit

import pytest

from mesh.client import Client
from mesh.core.manifest import chunk_hash
from mesh.errors import ChunkMissing, Conflict, InvalidKey, InvalidRequest, KeyNotFound, VersionNotFound
from mesh.store.chunker import chunk_bytes


def raw(d, method, path, body=None, headers=None):
    u = urlsplit(d.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 1024 * 1024 + 17])
def test_put_get_round_trip(shared_eltond, size):
    c = shared_eltond.client()
    data = os.urandom(size)
    key = f"round/{size}"
    v1 = c.put(key, data)
    assert (v1["key"], v1["version"], v1["size"], v1["parent"]) == (key, 1, size, 0)
    assert c.read(key) == data
    assert c.read(key, 1) == data


def test_versions_are_immutable_and_increase(shared_eltond):
    c = shared_eltond.client()
    bodies = [os.urandom(1000 + i) for i in range(4)]
    versions = [c.put("imm/k", b)["version"] for b in bodies]
    assert versions == [1, 2, 3, 4]
    for v, b in zip(versions, bodies, strict=True):
        assert c.read("imm/k", v) == b
    assert c.read("imm/k") == bodies[-1]
    log = c.versions("imm/k")
    assert [v["version"] for v in log] == [4, 3, 2, 1]
    assert [v["parent"] for v in log] == [3, 2, 1, 0]
    m = c.manifest("imm/k", 2)
    assert m["size"] == 1001 and m["issuer"] == shared_eltond.client().health()["node_id"]


def test_cdc_edit_in_the_middle_changes_few_chunks(shared_eltond):
    c = shared_eltond.client()
    rng = random.Random(24)  # seeded: chunk boundaries, and so the bound below, are the same every run
    data = bytearray(rng.randbytes(24 * 1024 * 1024))
    c.put("cdc/big", bytes(data))
    data[12_000_000:12_000_000 + 1024 * 1024] = rng.randbytes(1024 * 1024)
    c.put("cdc/big", bytes(data))
    old = {ch["hash"] for ch in c.manifest("cdc/big", 1)["chunks"]}
    new = c.manifest("cdc/big", 2)["chunks"]
    changed = sum(ch["size"] for ch in new if ch["hash"] not in old)
    assert changed <= 4 * 1024 * 1024, changed
    assert c.read("cdc/big", 2) == bytes(data)


def test_invalid_unknown_and_bad_versions(shared_eltond):
    c = shared_eltond.client()
    with pytest.raises(KeyNotFound, match="nope/x"):
        c.read("nope/x")
    c.put("known", b"x")
    with pytest.raises(VersionNotFound, match="known@7 .latest is 1"):
        c.read("known", 7)
    resp, body = raw(shared_eltond, "PUT", "/v1/keys/a//b", b"x")
    assert resp.status == 400 and "empty segment" in json.loads(body)["message"]
    resp, body = raw(shared_eltond, "GET", "/v1/keys/a/../b")
    assert resp.status in (400, 404)
    resp, body = raw(shared_eltond, "GET", "/v1/keys/known?version=zero")
    assert resp.status == 400 and "version" in json.loads(body)["message"]
    with pytest.raises(InvalidKey):
        c.put("x" * 1025, b"x")


def test_versioned_get_is_cacheable_latest_is_not(shared_eltond):
    c = shared_eltond.client()
    c.put("cache/k", b"one")
    c.put("cache/k", b"two")
    resp, body = raw(shared_eltond, "GET", "/v1/keys/cache/k?version=1")
    assert body == b"one"
    assert resp.getheader("Cache-Control") == "public, max-age=31536000, immutable"
    etag = resp.getheader("ETag")
    assert etag == f'"{c.manifest("cache/k", 1)["content_hash"]}"'
    resp304, _ = raw(shared_eltond, "GET", "/v1/keys/cache/k?version=1", headers={"If-None-Match": etag})
    assert resp304.status == 304
    latest, body = raw(shared_eltond, "GET", "/v1/keys/cache/k")
    assert body == b"two" and latest.getheader("Cache-Control") == "no-store"
    assert latest.getheader("X-Elton-Version") == "2"
    assert latest.getheader("Content-Location") == "/v1/keys/cache/k?version=2"
    head, body = raw(shared_eltond, "HEAD", "/v1/keys/cache/k?version=2")
    assert head.status == 200 and body == b"" and head.getheader("Content-Length") == "3"


@pytest.mark.parametrize("rng,expect", [
    ("bytes=0-9", (0, 10)), ("bytes=100-", (100, None)), ("bytes=-50", (-50, None)),
    ("bytes=1048570-2097160", (1048570, 2097161)), ("bytes=5-5", (5, 6)),
])
def test_byte_ranges(shared_eltond, rng, expect):
    c = shared_eltond.client()
    data = os.urandom(3 * 1024 * 1024)
    c.put(f"range/{rng}", data)
    resp, body = raw(shared_eltond, "GET", f"/v1/keys/range/{rng}?version=1", headers={"Range": rng})
    assert resp.status == 206
    assert body == data[expect[0]:expect[1]]
    start = expect[0] % len(data)
    assert resp.getheader("Content-Range") == f"bytes {start}-{start + len(body) - 1}/{len(data)}"


def test_unsatisfiable_range(shared_eltond):
    shared_eltond.client().put("range/small", b"0123456789")
    resp, body = raw(shared_eltond, "GET", "/v1/keys/range/small", headers={"Range": "bytes=10-20"})
    assert resp.status == 416 and resp.getheader("Content-Range") == "bytes */10"


def test_list_keys_by_prefix(shared_eltond):
    c = shared_eltond.client()
    for k in ("ls/a/1", "ls/a/2", "ls/b/1", "lsx"):
        c.put(k, k.encode())
    assert [k["key"] for k in c.list("ls/a/")] == ["ls/a/1", "ls/a/2"]
    assert [k["key"] for k in c.list("ls/")] == ["ls/a/1", "ls/a/2", "ls/b/1"]


def test_keys_named_versions_are_reachable(shared_eltond):
    c = shared_eltond.client()
    c.put("odd/versions", b"content")
    assert c.read("odd/versions") == b"content"
    assert c.versions("odd/versions")[0]["version"] == 1


def test_compare_and_set_parent(shared_eltond):
    c = shared_eltond.client()
    assert c.put("cas/k", b"a", parent=0)["version"] == 1
    with pytest.raises(Conflict, match="key 'cas/k' is at version 1, not 0"):
        c.put("cas/k", b"b", parent=0)
    assert c.put("cas/k", b"b", parent=1)["version"] == 2


def test_chunk_upload_and_commit(shared_eltond):
    c = shared_eltond.client()
    data = os.urandom(5 * 1024 * 1024)
    pieces = chunk_bytes(data)
    hashes = [chunk_hash(p) for p in pieces]
    assert c.missing_chunks(hashes) == hashes
    for p in pieces[:-1]:
        c.put_chunk(p)
    assert c.missing_chunks(hashes) == hashes[-1:]
    with pytest.raises(ChunkMissing):
        c.commit("commit/k", chunks=[(h, len(p)) for h, p in zip(hashes, pieces, strict=True)])
    c.put_chunk(pieces[-1])
    m = c.commit("commit/k", chunks=[(h, len(p)) for h, p in zip(hashes, pieces, strict=True)],
                 meta={"message": "hello"}, parent=0)
    assert m["version"] == 1 and m["size"] == len(data) and m["meta"] == {"message": "hello"}
    assert c.read("commit/k") == data
    assert c.get_chunk(hashes[0]) == pieces[0]
    tree = c.commit("commit/vol", chunks=[], kind="tree", meta={"root": hashes[0]})
    assert tree["kind"] == "tree" and tree["size"] == 0


def test_commit_with_durable_chunks(shared_eltond):
    """``durable`` names chunks a version needs beyond its list (eltonfs trees); each must be here."""
    c = shared_eltond.client()
    pieces = [os.urandom(2000 + i) for i in range(3)]
    hashes = [c.put_chunk(p) for p in pieces]
    durable = [(h, len(p)) for h, p in zip(hashes, pieces, strict=True)]
    tree = c.commit("durable/vol", chunks=[], kind="tree", meta={"root": hashes[0]}, durable=durable, parent=0)
    assert tree["version"] == 1 and tree["chunks"] == [] and tree["size"] == 0
    absent = chunk_hash(b"not uploaded")
    with pytest.raises(ChunkMissing, match=f"not stored here, first {absent}"):
        c.commit("durable/vol", chunks=[], kind="tree", meta={"root": hashes[0]}, durable=[*durable, (absent, 12)])
    with pytest.raises(InvalidRequest, match="not 5"):
        c.commit("durable/vol", chunks=[], kind="tree", meta={"root": hashes[0]}, durable=[(hashes[0], 5)])
    for bad in ({"x": 1}, [["short"]], "abc"):
        resp, body = raw(shared_eltond, "POST", "/v1/keys/durable/vol/versions",
                         json.dumps({"chunks": [], "kind": "tree", "durable": bad}).encode(),
                         {"Content-Type": "application/json"})
        assert resp.status == 400 and "commit body" in json.loads(body)["message"], bad
    resp, body = raw(shared_eltond, "POST", "/v1/keys/durable/vol/versions",
                     json.dumps({"chunks": durable, "durable": [{"hash": hashes[1], "size": len(pieces[1])}]}).encode(),
                     {"Content-Type": "application/json"})
    assert resp.status == 201 and json.loads(body)["version"] == 2
    assert c.manifest("durable/vol")["version"] == 2


def test_chunk_with_wrong_hash_is_refused(shared_eltond):
    resp, body = raw(shared_eltond, "PUT", "/v1/chunks/" + "0" * 64, b"not that")
    assert resp.status == 400 and "hashes to" in json.loads(body)["message"]
    resp, body = raw(shared_eltond, "PUT", "/v1/chunks/xyz", b"x")
    assert resp.status == 400 and "not a chunk hash" in json.loads(body)["message"]
    with pytest.raises(InvalidRequest):
        shared_eltond.client().missing_chunks(["nothex"])


def test_openapi_document(shared_eltond):
    resp, body = raw(shared_eltond, "GET", "/v1/openapi.json")
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/keys/{key}", "/v1/keys/{key}/versions", "/v1/keys", "/v1/chunks/{hash}"):
        assert path in doc["paths"]


def test_truncated_upload_leaves_no_version(shared_eltond):
    u = urlsplit(shared_eltond.url)
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(b"PUT /v1/keys/trunc/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n" + os.urandom(3_000_000))
    s.close()
    c = shared_eltond.client()
    with pytest.raises(KeyNotFound):
        for _ in range(50):
            c.read("trunc/k")
    assert c.health()["ok"]
    assert c.put("trunc/k", b"after")["version"] == 1


def test_status_reports_store(shared_eltond):
    st = shared_eltond.client().status()
    assert st["role"] == "both" and st["cluster"] == "default" and st["store"]["keys"] >= 0
    assert st["http_url"] == shared_eltond.url
    issuance = st["issuance"]  # a single host is its own mesh's only master
    assert issuance["role"] == "master" and issuance["masters"] == 1 and isinstance(issuance["counters"], dict)


def test_reads_then_commits_on_one_connection_never_commit_twice(shared_eltond):
    c = shared_eltond.client()
    for i in range(30):
        assert c.put("keepalive/k", f"{i}".encode())["version"] == i + 1
        assert c.read("keepalive/k") == f"{i}".encode()
    assert [v["version"] for v in c.versions("keepalive/k")] == list(range(30, 0, -1))


def test_chunk_stream_returns_chunks_in_order_and_refuses_bad_lists(shared_eltond):
    c = shared_eltond.client()
    data = random.Random(5).randbytes(5 * 1024 * 1024)
    m = c.put("stream/k", data)
    refs = [(ch["hash"], ch["size"]) for ch in c.manifest("stream/k", m["version"])["chunks"]]
    assert b"".join(c.stream_chunks(refs + refs[:1])) == data + data[: refs[0][1]]
    resp, body = raw(shared_eltond, "POST", "/v1/chunks/stream", json.dumps({"chunks": [["0" * 64, 0]]}).encode(),
                     {"Content-Type": "application/json"})
    assert resp.status == 400 and "with its size" in json.loads(body)["message"]
    missing = chunk_hash(b"nobody has this")
    resp, body = raw(shared_eltond, "POST", "/v1/chunks/stream", json.dumps({"chunks": [[missing, 15]]}).encode(),
                     {"Content-Type": "application/json"})
    assert resp.status == 404


def test_chunk_reads_take_an_author_hint_and_refuse_a_malformed_one(shared_eltond):
    """``author`` (GET ?author=, the stream's "author") names a node id; a well-formed one does not
    change what a host holding the chunks serves, a malformed one is a 400 naming the parameter."""
    c = shared_eltond.client()
    data = os.urandom(100_000)
    m = c.put("hint/k", data)
    refs = [(ch["hash"], ch["size"]) for ch in c.manifest("hint/k", m["version"])["chunks"]]
    c.author_hint = "ab" * 20
    assert c.get_chunk(*refs[0]) == data[: refs[0][1]]
    assert b"".join(c.stream_chunks(refs)) == data
    h = refs[0][0]
    for bad in ("xyz", "ab" * 19, "zz" * 20):
        resp, body = raw(shared_eltond, "GET", f"/v1/chunks/{h}?author={bad}")
        assert resp.status == 400 and "author must be a node id" in json.loads(body)["message"]
        resp, body = raw(shared_eltond, "POST", "/v1/chunks/stream",
                         json.dumps({"chunks": [list(refs[0])], "author": bad}).encode(),
                         {"Content-Type": "application/json"})
        assert resp.status == 400 and "author must be a node id" in json.loads(body)["message"]
    resp, body = raw(shared_eltond, "POST", "/v1/chunks/stream", b"[1, 2]", {"Content-Type": "application/json"})
    assert resp.status == 400


def test_chunk_stream_into_buffers_unverified_from_a_local_daemon(shared_eltond):
    c = shared_eltond.client()
    assert c.is_local  # 127.0.0.1: eltonfs skips its second hash check of what this daemon streams
    assert Client("http://localhost:1").is_local and Client("http://[::1]:1").is_local
    assert not Client("http://10.0.0.2:7420").is_local and not Client("http://example.org").is_local
    data = random.Random(6).randbytes(3 * 1024 * 1024)
    m = c.put("stream/unverified", data)
    refs = [(ch["hash"], ch["size"]) for ch in c.manifest("stream/unverified", m["version"])["chunks"]]
    buffers = [bytearray(max(n for _, n in refs)) for _ in range(2)]
    assert b"".join(bytes(v) for v in c.stream_chunks_into(refs, buffers, verify=False)) == data


def test_chunk_stream_spliced_into_a_file_keeps_the_connection(shared_eltond, tmp_path):
    c = shared_eltond.client()
    data = random.Random(7).randbytes(6 * 1024 * 1024)
    m = c.put("stream/spliced", data)
    refs = [(ch["hash"], ch["size"]) for ch in c.manifest("stream/spliced", m["version"])["chunks"]]
    steps: list[int] = []
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        c.stream_chunks_to_fd(refs, fd, steps.append)
        conn = c._local.conn
        c.stream_chunks_to_fd(refs[:1], fd, steps.append)  # the same connection, left clean
        assert c._local.conn is conn
    finally:
        os.close(fd)
    assert sum(steps) == len(data) + refs[0][1]
    assert (tmp_path / "out").read_bytes() == data
    assert c.read("stream/spliced") == data
