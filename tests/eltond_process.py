"""Run a real eltond process for tests: free port, own data dir, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.client import Client

START_TIMEOUT = 20.0


class EltondProcess:
    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = list(extra)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    def start(self, http: str = "127.0.0.1:0") -> EltondProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = self.data_dir / "eltond.json"
        runtime.unlink(missing_ok=True)
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mesh.cli.eltond", "start", "--data-dir", str(self.data_dir),
                 "--http", http, *(() if "--gossip" in self.extra else ("--gossip", "127.0.0.1:0")), *self.extra],
                stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"eltond exited {self.proc.returncode}: {self.log()}")
            try:
                info = json.loads(runtime.read_text())
                if info.get("pid") == self.proc.pid:
                    self.url = info["http_url"]
                    return self
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"eltond did not start: {self.log()}")

    def client(self, timeout: float = 60) -> Client:
        return Client(self.url, timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
