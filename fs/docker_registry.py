"""The Docker plugin's memory: volumes, their options and container mounts, in one SQLite file.

Docker asks the plugin what volumes exist after every restart (of dockerd or of the plugin), and
container mounts outlive the plugin process, so all of it lives on disk in the state directory.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.core.keys import validate_key
from mesh.errors import InvalidKey

OPTIONS = ("volume", "version")
SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes(name TEXT PRIMARY KEY, volume TEXT NOT NULL, version INT,
  opts TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mounts(name TEXT NOT NULL, id TEXT NOT NULL, mountpoint TEXT NOT NULL,
  state_dir TEXT, active INT NOT NULL, changes INT, PRIMARY KEY(name, id));
"""


class PluginError(Exception):
    """A request the plugin refuses; the message goes back to Docker in ``Err``."""


@dataclass(frozen=True)
class VolumeSpec:
    """What a Docker volume maps to: an Elton volume, pinned at ``version`` or following the latest."""

    name: str
    volume: str
    version: int | None
    opts: dict[str, str]
    created_at: str = ""

    def mount_spec(self) -> str:
        return f"{self.volume}@{self.version}" if self.version else self.volume


@dataclass(frozen=True)
class MountRecord:
    """One container's mount of a volume: its own mountpoint and state dir (its upper layer)."""

    name: str
    id: str
    mountpoint: str
    state_dir: str | None
    active: bool
    changes: int | None


def parse_options(name: str, opts: Any) -> VolumeSpec:
    """Map ``docker volume create -o k=v`` options to a spec; refuse anything else, naming the option."""
    if opts is None:
        opts = {}
    if not isinstance(opts, dict) or not all(isinstance(v, str) for v in opts.values()):
        raise PluginError("Opts must be an object of string options")
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise PluginError(f"unknown option {unknown[0]!r}: elton takes volume=NAME and version=N")
    volume = opts.get("volume", name)
    try:
        validate_key(volume)
    except InvalidKey as exc:
        raise PluginError(f"option volume={volume!r} is not an Elton volume name: {exc.message}") from None
    version = None
    if "version" in opts:
        raw = opts["version"]
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise PluginError(f"option version={raw!r} is not a version number (a positive integer)")
        version = int(raw)
    return VolumeSpec(name, volume, version, dict(opts))


class Registry:
    """``plugin.db`` in the state directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- volumes ----------------------------------------------------------------------------------
    def add(self, spec: VolumeSpec) -> VolumeSpec:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.db.execute("INSERT INTO volumes(name, volume, version, opts, created_at) VALUES(?, ?, ?, ?, ?)",
                        (spec.name, spec.volume, spec.version, json.dumps(spec.opts, sort_keys=True), created))
        return VolumeSpec(spec.name, spec.volume, spec.version, spec.opts, created)

    def get(self, name: str) -> VolumeSpec | None:
        row = self.db.execute("SELECT name, volume, version, opts, created_at FROM volumes WHERE name=?",
                              (name,)).fetchone()
        return VolumeSpec(row[0], row[1], row[2], json.loads(row[3]), row[4]) if row else None

    def need(self, name: str) -> VolumeSpec:
        spec = self.get(name)
        if spec is None:
            raise PluginError(f"no such volume: {name!r} (create it with `docker volume create -d elton`)")
        return spec

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM volumes ORDER BY name")]

    def remove(self, name: str) -> None:
        self.db.execute("DELETE FROM volumes WHERE name=?", (name,))
        self.db.execute("DELETE FROM mounts WHERE name=?", (name,))

    # -- mounts -----------------------------------------------------------------------------------
    def mounts(self, name: str | None = None) -> list[MountRecord]:
        sql = "SELECT name, id, mountpoint, state_dir, active, changes FROM mounts"
        rows = self.db.execute(sql + (" WHERE name=? ORDER BY rowid" if name else " ORDER BY rowid"),
                               (name,) if name else ()).fetchall()
        return [MountRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    def mount(self, name: str, mount_id: str) -> MountRecord | None:
        return next((m for m in self.mounts(name) if m.id == mount_id), None)

    def put_mount(self, m: MountRecord) -> None:
        self.db.execute("INSERT OR REPLACE INTO mounts(name, id, mountpoint, state_dir, active, changes)"
                        " VALUES(?, ?, ?, ?, ?, ?)", (m.name, m.id, m.mountpoint, m.state_dir, int(m.active),
                                                      m.changes))

    def drop_mount(self, name: str, mount_id: str) -> None:
        self.db.execute("DELETE FROM mounts WHERE name=? AND id=?", (name, mount_id))
