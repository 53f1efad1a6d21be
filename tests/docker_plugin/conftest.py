"""A real ``eltonfs docker-plugin`` process on a unix socket, talked to as dockerd does, over a real eltond."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.eltond_process import EltondProcess

START_TIMEOUT = 20.0
_names = itertools.count()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class PluginProcess:
    """The plugin and the environment its eltonfs mounts run in (their control sockets, the eltond URL)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.socket = root / "run" / "plugins" / "elton.sock"
        self.state_dir = root / "state"
        self.env = {**os.environ, "ELTON_HOST": url, "ELTONFS_RUN_DIR": str(root / "eltonfs-run"),
                    "ELTONFS_CACHE_DIR": str(root / "tools-cache")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "plugin.log"

    def start(self) -> PluginProcess:
        self.socket.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fs.cli", "docker-plugin", "--socket", str(self.socket),
                 "--host", self.url, "--state-dir", str(self.state_dir)],
                stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the plugin did not start: {self.log()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def call(self, verb: str, body: dict[str, Any] | None = None, timeout: float = 180) -> dict[str, Any]:
        """One request as dockerd sends it: POST /<verb>, a JSON body, the plugins content type."""
        conn = UnixHTTPConnection(self.socket, timeout)
        try:
            conn.request("POST", f"/{verb}", body=json.dumps(body or {}),
                         headers={"Accept": "application/vnd.docker.plugins.v1.2+json",
                                  "Content-Type": "application/vnd.docker.plugins.v1.2+json"})
            resp = conn.getresponse()
            reply = json.loads(resp.read())
        finally:
            conn.close()
        assert "Err" in reply, reply
        return reply

    def ok(self, verb: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = self.call(verb, body)
        assert reply["Err"] == "", f"{verb} {body}: {reply['Err']}\n{self.log()}"
        return reply

    def eltonfs(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "fs.cli", *args], env=self.env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, f"eltonfs {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    def unmount_all(self) -> None:
        """Teardown: nothing this test mounted stays mounted, whatever the plugin did."""
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].replace("\\040", " ") for line in f]
        for p in reversed(points):
            if p.startswith(str(self.root)):
                if subprocess.run(["fusermount3", "-u", p], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", p], capture_output=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EltondProcess]:
    d = EltondProcess(tmp_path_factory.mktemp("dockernode") / "node").start()
    yield d
    d.stop()


@pytest.fixture
def plugin(tmp_path: Path, node: EltondProcess) -> Iterator[PluginProcess]:
    p = PluginProcess(tmp_path, node.url)
    try:
        yield p.start()
    finally:
        p.unmount_all()
        p.stop()


@pytest.fixture
def volume(plugin: PluginProcess) -> str:
    """An Elton volume with version 1 (empty) and version 2 (hello.txt, docs/readme.md)."""
    name = f"dvol{os.getpid()}-{next(_names)}"
    plugin.eltonfs("init", name)
    mnt = plugin.root / "seed"
    mnt.mkdir()
    plugin.eltonfs("mount", name, str(mnt))
    try:
        (mnt / "hello.txt").write_text("committed")
        (mnt / "docs").mkdir()
        (mnt / "docs" / "readme.md").write_text("# lower\n")
        assert "committed version 2" in plugin.eltonfs("commit", str(mnt))
    finally:
        plugin.eltonfs("umount", str(mnt))
    return name
