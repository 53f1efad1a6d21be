"""Run Debian's nginx as a private process (own prefix, own port) for benchmarks, demos and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

MAIN_CONF = """
{user}
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class NginxProcess:
    """nginx in the foreground with ``http_block`` (``{port}`` and ``{prefix}`` are filled in)."""

    def __init__(self, workdir: Path, http_block: str, **values: object) -> None:
        self.prefix = workdir
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""  # workers must write into our own folders
        http = http_block.format(port=self.port, prefix=self.prefix, **values)
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(MAIN_CONF.format(user=user, prefix=self.prefix, http=http))
        self.proc = subprocess.Popen(["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
                                     stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError as exc:
            self.stop()
            log = (self.prefix / "error.log").read_text(errors="replace") if (self.prefix / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {log[-500:]}") from exc
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
