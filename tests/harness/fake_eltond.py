"""A stand-in for `eltond start` in harness tests: records its arguments and answers /v1/health."""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        ok = self.path == "/v1/health"
        body = json.dumps({"status": "ok"} if ok else {"error": "not found"}).encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["start"])
    for opt in ("--data-dir", "--http", "--gossip", "--cluster", "--role"):
        p.add_argument(opt, required=True)
    p.add_argument("--join", action="append", default=[])
    args = p.parse_args(argv)
    if Path(args.data_dir, "FAIL").exists():  # tests mark a host whose daemon dies at once
        sys.exit(3)
    if Path(args.data_dir, "HANG").exists():  # ... or one that never answers
        time.sleep(3600)
    Path(args.data_dir, "argv.json").write_text(json.dumps({"argv": argv, **vars(args)}))
    host, port = args.http.rsplit(":", 1)
    print(f"fake eltond listening on {args.http}", flush=True)
    ThreadingHTTPServer((host, int(port)), _Health).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
