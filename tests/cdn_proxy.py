"""nginx as an HTTP cache in front of eltond: the demo behind scripts/cdn-demo, used by its test."""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.eltond_process import EltondProcess
from tests.nginx import NginxProcess

CONF = Path(__file__).resolve().parents[1] / "scripts" / "cdn" / "nginx-elton-cache.conf"


def start_cache(workdir: Path, upstream_url: str) -> NginxProcess:
    block = "\n".join(line for line in CONF.read_text().splitlines() if not line.lstrip().startswith("#"))
    return NginxProcess(workdir, block, upstream=upstream_url.removeprefix("http://"))


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def demo() -> int:
    work = Path(tempfile.mkdtemp(prefix="elton-cdn-"))
    node = EltondProcess(work / "node").start()
    cache = start_cache(work / "nginx", node.url)
    try:
        c = node.client()
        print(f"eltond {node.url}   nginx cache {cache.url}")
        c.put("site/logo.png", b"logo, first version")
        for attempt in (1, 2):
            status, h, body = fetch(f"{cache.url}/v1/keys/site/logo.png?version=1")
            print(f"GET ?version=1 #{attempt}: {status} X-Cache-Status={h.get('X-Cache-Status')} {body!r}")
        node.stop()
        status, h, body = fetch(f"{cache.url}/v1/keys/site/logo.png?version=1")
        print(f"eltond stopped; GET ?version=1: {status} X-Cache-Status={h.get('X-Cache-Status')} {body!r}")
        node.start(http=node.url.removeprefix("http://"))  # same address: the cache's upstream
        c = node.client()
        c.put("site/logo.png", b"logo, second version")
        status, h, body = fetch(f"{cache.url}/v1/keys/site/logo.png")
        print(f"after commit 2, GET latest: X-Elton-Version={h.get('X-Elton-Version')} {body!r} (no purge)")
        status, h, body = fetch(f"{cache.url}/v1/keys/site/logo.png?version=2", {"Range": "bytes=6-11"})
        print(f"GET ?version=2 Range bytes=6-11: {status} {h.get('Content-Range')} {body!r}")
    finally:
        cache.stop()
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(demo())
