"""The daemon's data directory: exclusive lock, host identity, runtime file (pid and addresses)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from mesh.core.identity import Identity
from mesh.errors import ConfigError, DataDirInUse

IDENTITY_FILE = "identity.key"
LOCK_FILE = "eltond.lock"
RUNTIME_FILE = "eltond.json"
PID_FILE = "eltond.pid"
LOG_FILE = "eltond.log"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create data directory {self.path}: {exc.strerror}") from exc

    def lock(self) -> None:
        """Hold the data directory for this process; a second eltond on it fails at once."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            info = self.read_runtime() or {}
            raise DataDirInUse(f"{self.path} (pid {info.get('pid', '?')})") from exc
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def identity(self) -> Identity:
        """Load the host's ed25519 identity, creating it on first start."""
        path = self.path / IDENTITY_FILE
        if path.exists():
            text = path.read_text().strip()
            try:
                return Identity(bytes.fromhex(text))
            except ValueError as exc:
                raise ConfigError(f"{path} is not a valid identity (64 hex digits)") from exc
        identity = Identity(os.urandom(32))
        write_atomic(path, identity.seed.hex().encode() + b"\n", mode=0o600)
        return identity

    def write_runtime(self, info: dict[str, Any]) -> None:
        write_atomic(self.path / RUNTIME_FILE, json.dumps(info, indent=2).encode())
        write_atomic(self.path / PID_FILE, f"{info['pid']}\n".encode())

    def read_runtime(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / RUNTIME_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def clear_runtime(self) -> None:
        for name in (RUNTIME_FILE, PID_FILE):
            (self.path / name).unlink(missing_ok=True)

    def running_pid(self) -> int | None:
        """The pid of the eltond holding this data dir, or None (checked by the lock, not the pid file)."""
        if not (self.path / LOCK_FILE).exists():
            return None
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = self.read_runtime() or {}
            pid = info.get("pid")
            return int(pid) if pid else -1
        finally:
            os.close(fd)
        return None
