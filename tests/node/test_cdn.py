"""A real nginx cache in front of eltond (scripts/cdn/nginx-elton-cache.conf) is a correct CDN."""

from __future__ import annotations

import os

import pytest

from tests.cdn_proxy import fetch, start_cache


@pytest.fixture
def cache(eltond, tmp_path):
    n = start_cache(tmp_path / "nginx", eltond.url)
    yield n
    n.stop()


def test_versioned_gets_are_served_from_the_cache_without_elton(eltond, cache):
    eltond.client().put("cdn/obj", b"first")
    url = f"{cache.url}/v1/keys/cdn/obj?version=1"
    assert fetch(url)[1]["X-Cache-Status"] == "MISS"
    status, headers, body = fetch(url)
    assert (status, headers["X-Cache-Status"], body) == (200, "HIT", b"first")
    eltond.stop()
    status, headers, body = fetch(url)
    assert (status, headers["X-Cache-Status"], body) == (200, "HIT", b"first")


def test_latest_is_never_cached_so_commits_show_without_purge(eltond, cache):
    c = eltond.client()
    c.put("cdn/latest", b"v1")
    url = f"{cache.url}/v1/keys/cdn/latest"
    for _ in range(2):
        status, headers, body = fetch(url)
        assert body == b"v1" and headers["X-Cache-Status"] != "HIT"
    c.put("cdn/latest", b"v2")
    status, headers, body = fetch(url)
    assert (body, headers["X-Elton-Version"]) == (b"v2", "2")


def test_byte_ranges_through_the_cache(eltond, cache):
    data = os.urandom(3 * 1024 * 1024)
    eltond.client().put("cdn/big", data)
    url = f"{cache.url}/v1/keys/cdn/big?version=1"
    for rng, (a, b) in (("bytes=1000-1999", (1000, 2000)), ("bytes=2097000-2099000", (2097000, 2099001)),
                        ("bytes=-10", (len(data) - 10, len(data)))):
        status, headers, body = fetch(url, {"Range": rng})
        assert status == 206 and body == data[a:b]
        assert headers["Content-Range"] == f"bytes {a}-{b - 1}/{len(data)}"
    assert fetch(url, {"Range": "bytes=0-0"})[1]["X-Cache-Status"] == "HIT"


def test_writes_do_not_pass_through_the_edge(eltond, cache):
    import urllib.request

    req = urllib.request.Request(f"{cache.url}/v1/keys/cdn/w", data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403
